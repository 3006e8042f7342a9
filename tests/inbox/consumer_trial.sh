#!/usr/bin/env bash
# End to end, per broker: duplicates on the wire, and a consumer whose effect
# table still ends with exactly one row per order.
#
#   consumer_trial.sh BROKER FIXTURE_ENV ORDER_SERVICE ORDER_SERVICE_CRASHPOINTS ORDER_CONSUMER
#     BROKER  amqp | kafka | mqtt | mqtt311 (MQTT 3.1.1, the id in the payload)
#   Environment: TRIAL_N (orders, 300), ACKBOX_TEST_TMP, CRASH_RESULTS (a file
#   to append the result line to).
#
# 1. The publisher (order_service linked with crash points) stores N orders
#    and dies at crash point after_confirm: the broker confirmed a message,
#    the outbox row was not deleted. Restarted, it sends all N again, so the
#    broker holds N + k messages, k >= 1 (every message it had received).
# 2. The consumer (order_consumer) is SIGKILLed after committing delivery
#    N/3 and before acknowledging it (the delivery comes again: DUPLICATE);
#    on AMQP and Kafka once more before committing delivery 5 of its next
#    run (the transaction rolls back: the delivery comes again, FIRST).
#    paho.mqtt.c acknowledges a QoS 1 message before the application sees
#    it, so on MQTT a kill before the commit would lose that message, with
#    or without an inbox (docs/consumers.md): that kill is not made there.
# 3. Restarted with --drain, it consumes the rest. The shipments table must
#    hold exactly N rows, one per order: 0 missing, 0 doubled; and the
#    consumer must have dropped at least one duplicate.
set -euo pipefail
broker=${1:?broker} envfile=${2:?fixture env} svc=${3:?order_service}
svc_crash=${4:?order_service with crash points} consumer=${5:?order_consumer}
n=${TRIAL_N:-300}
[ -f "$envfile" ] || { echo "consumer trial: broker fixture did not start ($envfile missing)" >&2; exit 1; }
# shellcheck disable=SC1090
. "$envfile"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/consumer-$broker-XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "consumer trial $broker: FAIL: $*" >&2; tail -5 "$work"/*.log >&2 2>/dev/null || true; exit 1; }
log() { echo "consumer trial $broker: $*"; }

topic="inbox_${broker}_$$"
sets=()
cons=(--topic "$topic" --consumer "trial$$")
case "$broker" in
amqp)    url=$AMQP_URL; sets+=(--set amqp.declare_queue=true) ;;
kafka)   url=$KAFKA_URL ;;
mqtt)    url=$MQTT_URL ;;
mqtt311) url=$MQTT_URL; sets+=(--set mqtt.version=3.1.1 --set mqtt.id_in_payload=true)
         cons+=(--mqtt-version 3.1.1) ;;
*) fail "unknown broker $broker" ;;
esac
run_consumer() { # log-name, extra args...
  local name=$1 rc=0
  shift
  "$consumer" --transport "$url" --db "$work/consumer.db" "${cons[@]}" "$@" \
    > "$work/$name.log" 2>&1 || rc=$?
  echo "$rc"
}

# MQTT keeps nothing for a consumer that has never subscribed: the
# consumer's persistent session exists before anything is published
if [[ $broker == mqtt* ]]; then
  [ "$(run_consumer subscribe --subscribe-only)" = 0 ] || fail "subscribe: $(cat "$work/subscribe.log")"
fi

# ---- 1. the publisher dies between the broker's confirm and the delete ----
rc=0
ACKBOX_CRASH_AT=after_confirm "$svc_crash" --db "$work/orders.db" --transport "$url" \
  --topic "$topic" --orders "$n" --quiet "${sets[@]}" > "$work/publish1.log" 2>&1 || rc=$?
[ "$rc" = 137 ] && grep -q "crash point reached" "$work/publish1.log" ||
  fail "the publisher did not die at after_confirm (exit $rc)"
rc=0
"$svc" --db "$work/orders.db" --transport "$url" --topic "$topic" --orders 0 --quiet \
  "${sets[@]}" > "$work/publish2.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "the restarted publisher exited $rc"
grep -q "0 order(s) placed; $n message(s) confirmed by the broker, 0 failed" "$work/publish2.log" ||
  fail "the restarted publisher did not resend all $n: $(cat "$work/publish2.log")"
log "publisher killed at after_confirm, restarted: all $n orders sent again"
if [[ $broker == mqtt* ]]; then
  # MQTT has no "queue empty": the consumer drains up to this marker
  mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -V "$([ "$broker" = mqtt ] && echo mqttv5 || echo mqttv311)" \
    -t "$topic" -m '{"event":"drain"}' || fail "cannot publish the drain marker"
fi

# ---- 2. the consumer is killed mid-run ----
k=$((n / 3))
rc=$(run_consumer consume1 --crash-after "$k")
[ "$rc" = 137 ] || fail "the consumer did not die after delivery $k (exit $rc)"
log "consumer killed after committing delivery $k, before acknowledging it"
if [[ $broker != mqtt* ]]; then
  rc=$(run_consumer consume2 --crash-before-commit 5)
  [ "$rc" = 137 ] || fail "the consumer did not die before committing delivery 5 (exit $rc)"
  log "consumer killed again before committing delivery 5 of its next run"
fi

# ---- 3. restarted, it drains the rest ----
rc=$(run_consumer consume3 --drain)
[ "$rc" = 0 ] || fail "the draining consumer exited $rc"
summary=$(grep '^summary' "$work/consume3.log") || fail "no summary"

q() { sqlite3 "$work/consumer.db" "$1"; }
rows=$(q "SELECT count(*) FROM shipments")
distinct=$(q "SELECT count(DISTINCT order_id) FROM shipments")
inrange=$(q "SELECT count(DISTINCT order_id) FROM shipments WHERE order_id BETWEEN 1 AND $n")
missing=$((n - inrange))
doubled=$((rows - distinct))
deliveries=$(cat "$work"/consume*.log | grep -c ': order ' || true)
dups=$(cat "$work"/consume*.log | grep -c 'DUPLICATE' || true)
line="consumer_trial broker=$broker n=$n deliveries=$deliveries duplicates_dropped=$dups shipments=$rows missing=$missing doubled=$doubled"
log "$line ($summary of the last run)"
[ -n "${CRASH_RESULTS:-}" ] && echo "$line" >> "$CRASH_RESULTS"
[ "$missing" = 0 ] || fail "$missing order(s) never shipped"
[ "$doubled" = 0 ] || fail "$doubled order(s) shipped twice"
[ "$rows" = "$n" ] || fail "shipments holds $rows rows, not $n"
[ "$dups" -ge 1 ] || fail "no duplicate reached the consumer: the trial proved nothing"
[ "$deliveries" -ge $((n + 1)) ] || fail "only $deliveries deliveries for $n orders"
