#!/usr/bin/env bash
# Crash and outage harness: proves "nothing accepted is lost" with the real
# `ackbox` CLI, a real broker and an independent consumer.
#
#   harness.sh BROKER MODE CLI FIXTURE_ENV
#     BROKER       amqp | mqtt | kafka | nats
#     MODE         kill9   `ackbox publish` SIGKILLed at a random moment, then
#                          `ackbox relay --until-empty` delivers the rest
#                  outage  the broker stopped for CRASH_OUTAGE_S seconds
#                          mid-stream and started again; publish must finish
#                          with every message acked and none FAILED
#                  point   CRASH_CLI (built with crash points) publishes and
#                          dies at CRASH_POINT; then `ackbox relay` as in kill9
#     CLI          the ackbox binary
#     FIXTURE_ENV  the env file the broker fixture wrote
#   Environment: CRASH_TRIALS (kill9 trials, 3), CRASH_OUTAGE_TRIALS (1),
#   CRASH_N (messages per trial, 5000), CRASH_OUTAGE_S (30),
#   CRASH_RESULTS (file to append result lines to), CRASH_NATS_DUMP (nats:
#   brokers/nats/tests/nats-stream-dump).
#
# The ledger: `ackbox publish --ledger` appends each range of sequence
# numbers as soon as the store has accepted it. Every number in the ledger
# must be read back by the consumer (amqp-consume, mosquitto_sub, kcat,
# nats-stream-dump):
# lost = ledger - received must be 0. Duplicates are counted and reported.
# No row may be left sending or retrying, and none may be FAILED. On NATS
# no duplicate may be left either: JetStream drops a resend whose Nats-Msg-Id
# it holds (within the stream's duplicate window, 2 minutes).
set -euo pipefail
broker=${1:?broker} mode=${2:?mode} cli=${3:?cli} envfile=${4:?fixture env}
trials=${CRASH_TRIALS:-3}
[ "$mode" = outage ] && trials=${CRASH_OUTAGE_TRIALS:-1}
[ "$mode" = point ] && trials=1
n=${CRASH_N:-5000}
outage=${CRASH_OUTAGE_S:-30}
size=32
here=$(cd "$(dirname "$0")" && pwd)
fixtures=$here/../fixtures
NATS_FIXTURE_SCRIPT=$here/../../brokers/nats/tests/nats-server.sh
[ -f "$envfile" ] || { echo "harness: broker fixture did not start ($envfile missing)" >&2; exit 1; }
# shellcheck disable=SC1090
. "$envfile"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/crash-$broker-$mode-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "harness $broker/$mode: FAIL: $*" >&2; exit 1; }
log() { echo "harness $broker/$mode: $*"; }

# Settings that make a test run brisk: quick reconnects after the outage.
sets=(--set retry.backoff.max=2s --set log.level=error)
# publish gives up after a stretch without progress (exit 4); an outage with
# nothing confirmed before it, plus a broker restart (RabbitMQ: 5-20 s), must
# fit in that stretch whatever the retry settings make of the default
pub_sets=(--stall-seconds $((outage + 120)))
# an outage trial keeps the warnings (transport disconnected, with how many
# messages were unconfirmed then) for the report of a losing trial
[ "$mode" = outage ] && pub_sets+=(--set log.level=warn)
case "$broker" in
amqp)  url=$AMQP_URL; sets+=(--set amqp.declare_queue=true) ;;
mqtt)  url=$MQTT_URL ;;
kafka) url=$KAFKA_URL ;;
nats)  url=$NATS_URL; dump=${CRASH_NATS_DUMP:?nats needs CRASH_NATS_DUMP} ;;
*) fail "unknown broker $broker" ;;
esac

# ---- the independent consumers ----
sub_pid=""
consumer_start() { # topic
  if [ "$broker" = amqp ]; then
    # The queue exists, durably, before the fault: RabbitMQ killed within
    # milliseconds of a queue's declaration (which the relay would do on its
    # first send) can come back without the queue, and with it go messages
    # it had confirmed. Applications declare their queues up front too.
    amqp-declare-queue --url="$AMQP_URL" -q "$1" -d > /dev/null ||
      fail "cannot declare queue $1"
    return 0
  fi
  [ "$broker" = mqtt ] || return 0
  # a persistent session subscribed before anything is published; it
  # reconnects by itself after a broker restart
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" -E
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" > "$work/$1.mqtt" 2>/dev/null &
  sub_pid=$!
  pids+=("$sub_pid")
}

# Prints the sequence number of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  local t=$1 want=$2
  case "$broker" in
  amqp)
    local count
    count=$(bash "$fixtures/rabbitmq.sh" queues "$RABBITMQ_FIXTURE_DIR" | awk -v q="$t" '$1==q {print $2}')
    # no queue: nothing was ever sent (the relay declares it on the first
    # send); every ledger number then counts as lost below
    [ -n "$count" ] && [ "$count" -gt 0 ] || return 0
    timeout 300 amqp-consume --url="$AMQP_URL" -q "$t" -c "$count" cat | fold -w "$size" | awk '{print $1}'
    ;;
  mqtt)
    # wait (bounded) until every ledger number arrived, then stop reading
    local deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
      if [ -z "$(comm -23 "$want" <(awk '{print $1}' "$work/$t.mqtt" | sort -u))" ]; then break; fi
      sleep 0.2
    done
    kill "$sub_pid" 2>/dev/null || true
    wait "$sub_pid" 2>/dev/null || true
    awk '{print $1}' "$work/$t.mqtt"
    ;;
  kafka)
    timeout 120 kcat -C -b "$KAFKA_BOOTSTRAP" -t "$t" -o beginning -e -q -f '%s\n' | awk '{print $1}'
    ;;
  nats)
    # the stream the relay created (nats.stream); none: nothing was sent
    timeout 120 "$dump" "$NATS_URL" "S_$t" 2>/dev/null | awk '{print $1}' || true
    ;;
  esac
}

# ---- checks ----
totals_trials=0 totals_accepted=0 totals_lost=0 totals_dups=0
check_trial() { # trial topic store ledger
  local i=$1 t=$2 store=$3 ledger=$4
  local want="$work/$t.want" got="$work/$t.got"
  awk '{for (s = $1; s <= $2; s++) print s}' "$ledger" | sort -u > "$want"
  local st
  st=$("$cli" status --store "$store" --json) || true
  local sending retrying failed
  sending=$(jq -r .sending <<<"$st"); retrying=$(jq -r .retrying <<<"$st"); failed=$(jq -r .failed <<<"$st")
  consumer_collect "$t" "$want" > "$got"
  local accepted received distinct lost dups extra
  accepted=$(wc -l < "$want")
  received=$(wc -l < "$got")
  distinct=$(sort -u "$got" | wc -l)
  lost=$(comm -23 "$want" <(sort -u "$got") | wc -l)
  dups=$((received - distinct))
  extra=$(awk -v n="$n" '$1 !~ /^[0-9]+$/ || $1 < 1 || $1 > n' "$got" | wc -l)
  local line="broker=$broker mode=$mode${CRASH_POINT:+:$CRASH_POINT} trial=$i n=$n accepted=$accepted received=$received lost=$lost duplicates=$dups sending=$sending retrying=$retrying failed=$failed"
  if [ "$broker" = nats ]; then
    # resends the stream recognised by Nats-Msg-Id and dropped (the relay's log)
    local dropped
    dropped=$({ cat "$work/relay-$i.err" "$work/publish-$i.err" 2>/dev/null || true; } |
              { grep -o "recognised [0-9]* resends" || true; } | awk '{s += $2} END {print s + 0}')
    line="$line dropped_by_stream=$dropped"
  fi
  log "$line"
  [ -n "${CRASH_RESULTS:-}" ] && echo "$line" >> "$CRASH_RESULTS"
  [ "$lost" -eq 0 ] || fail "trial $i lost $lost accepted message(s), numbers $(comm -23 "$want" <(sort -u "$got") | sort -n | awk 'NR == 1 {lo = $1} {hi = $1; n++} END {printf "%s..%s (%s of them)", lo, hi, n}'); publish said: $(grep -h "disconnected" "$work/publish-$i.err" 2>/dev/null | head -3 | tr '\n' ' ')$(cat "$work/publish-$i.out" "$work/publish-$i.err" 2>/dev/null | tail -3 | tr '\n' ' ')"
  [ "$extra" -eq 0 ] || fail "trial $i received $extra message(s) that were never published"
  [ "$sending" = 0 ] && [ "$retrying" = 0 ] || fail "trial $i left rows pending: $st"
  [ "$failed" = 0 ] || fail "trial $i has $failed FAILED message(s): $("$cli" list --store "$store" --state failed --limit 3)"
  [ "$broker" != nats ] || [ "$dups" -eq 0 ] ||
    fail "trial $i: the stream holds $dups duplicate(s); JetStream should have dropped resends by Nats-Msg-Id"
  totals_trials=$((totals_trials + 1))
  totals_accepted=$((totals_accepted + accepted))
  totals_lost=$((totals_lost + lost))
  totals_dups=$((totals_dups + dups))
}

# Waits (bounded) until the ledger shows at least one accepted range.
wait_ledger() { # ledger pid
  local deadline=$((SECONDS + 30))
  until [ -s "$1" ]; do
    kill -0 "$2" 2>/dev/null || fail "publish exited before storing anything"
    [ $SECONDS -lt $deadline ] || fail "publish stored nothing within 30 s"
    sleep 0.01
  done
}

broker_down() {
  case "$broker" in
  amqp)  bash "$fixtures/rabbitmq.sh" kill "$RABBITMQ_FIXTURE_DIR" ;;   # SIGKILL: a crash
  nats)  bash "$NATS_FIXTURE_SCRIPT" kill "$NATS_FIXTURE_DIR" ;;          # SIGKILL (docs/brokers/nats.md)
  mqtt)  bash "$fixtures/mosquitto.sh" term "$MOSQUITTO_FIXTURE_DIR" ;; # see docs/brokers/mqtt.md
  kafka) bash "$fixtures/kafka-mock.sh" down "$KAFKA_FIXTURE_DIR" ;;
  esac
}

broker_up() { # publisher pid (mqtt: held while the subscriber re-attaches)
  case "$broker" in
  amqp)  bash "$fixtures/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" >/dev/null ;;
  kafka) bash "$fixtures/kafka-mock.sh" up "$KAFKA_FIXTURE_DIR" ;;
  nats)  bash "$NATS_FIXTURE_SCRIPT" restart "$NATS_FIXTURE_DIR" >/dev/null ;;
  mqtt)
    # mosquitto 2.0.11 queues nothing for a restored offline session until its
    # client reconnects (docs/brokers/mqtt.md): hold the publisher until the
    # subscriber is back, so the test measures ackbox, not that broker limit
    kill -STOP "$1" 2>/dev/null || true
    local before
    before=$(grep -c "as c-$2 " "$MOSQUITTO_FIXTURE_DIR/log" || true)
    bash "$fixtures/mosquitto.sh" restart "$MOSQUITTO_FIXTURE_DIR" >/dev/null
    local deadline=$((SECONDS + 30))
    until [ "$(grep -c "as c-$2 " "$MOSQUITTO_FIXTURE_DIR/log" || true)" -gt "$before" ]; do
      [ $SECONDS -lt $deadline ] || { kill -CONT "$1" 2>/dev/null; fail "subscriber did not reconnect"; }
      sleep 0.1
    done
    kill -CONT "$1" 2>/dev/null || true
    ;;
  esac
}

for i in $(seq 1 "$trials"); do
  topic="crash_${mode}_$$_$i"
  store="sqlite://$work/outbox-$i.db"
  ledger="$work/ledger-$i"
  : > "$ledger"
  trial_sets=()
  # nats: the relay makes the trial's stream (file storage, duplicate window 2 min)
  # (log.level info: the relay says how many resends the stream dropped)
  [ "$broker" = nats ] && trial_sets=(--set "nats.stream=S_$topic" --set "nats.stream_subjects=$topic"
                                      --set log.level=info)
  consumer_start "$topic"
  pub_cli=$cli
  [ "$mode" = point ] && pub_cli=${CRASH_CLI:?point mode needs CRASH_CLI}
  # odd kill9 trials store in transactions of 10, so that storing takes long
  # enough (about half a second) for the kill to land in the middle of it
  batch=500
  [ "$mode" = kill9 ] && [ $((i % 2)) -eq 1 ] && batch=10
  ACKBOX_CRASH_AT=${CRASH_POINT:-} \
  "$pub_cli" publish --store "$store" --transport "$url" --topic "$topic" --count "$n" --size "$size" \
    --batch "$batch" --ledger "$ledger" "${sets[@]}" "${pub_sets[@]}" "${trial_sets[@]}" > "$work/publish-$i.out" 2> "$work/publish-$i.err" &
  pub=$!
  pids+=("$pub")
  case "$mode" in
  kill9)
    # a random moment within the run: the fault, not a synchronisation
    # (odd trials while publish is still storing, even ones while it sends)
    if [ $((i % 2)) -eq 1 ]; then
      delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", (r % 300) / 1000 }')
    else
      delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.08 + (r % 700) / 1000 }')
    fi
    sleep "$delay"
    kill -9 "$pub" 2>/dev/null || true
    wait "$pub" 2>/dev/null || true
    log "trial $i: publish killed after ${delay}s with $(awk '{s += $2 - $1 + 1} END {print s + 0}' "$ledger") accepted"
    if [ ! -e "$work/outbox-$i.db" ]; then
      # killed before it created its store: then it cannot have accepted anything
      [ ! -s "$ledger" ] || fail "trial $i: a ledger but no store file"
      log "trial $i: killed before the store existed; nothing accepted, nothing to deliver"
      totals_trials=$((totals_trials + 1))
      continue
    fi
    rc=0
    "$cli" relay --store "$store" --transport "$url" --until-empty --max-seconds 120 "${sets[@]}" "${trial_sets[@]}" \
      > "$work/relay-$i.out" 2> "$work/relay-$i.err" || rc=$?
    [ "$rc" -eq 0 ] || fail "relay --until-empty exited $rc: $(cat "$work/relay-$i.err")"
    ;;
  point)
    rc=0
    wait "$pub" || rc=$?
    [ "$rc" -eq 137 ] && grep -q "crash point reached" "$work/publish-$i.err" ||
      fail "publish did not die at $CRASH_POINT (exit $rc): $(cat "$work/publish-$i.err")"
    log "trial $i: died at $CRASH_POINT with $(awk '{s += $2 - $1 + 1} END {print s + 0}' "$ledger") accepted, $("$cli" status --store "$store" --json | jq -c '{sending,retrying}') in the store"
    rc=0
    "$cli" relay --store "$store" --transport "$url" --until-empty --max-seconds 120 "${sets[@]}" "${trial_sets[@]}" \
      > "$work/relay-$i.out" 2> "$work/relay-$i.err" || rc=$?
    [ "$rc" -eq 0 ] || fail "relay --until-empty exited $rc: $(cat "$work/relay-$i.err")"
    ;;
  outage)
    wait_ledger "$ledger" "$pub"
    broker_down
    log "trial $i: broker down for ${outage}s mid-stream"
    sleep "$outage" # the length of the outage is the fault being injected
    broker_up "$pub" "$topic"
    rc=0
    wait "$pub" || rc=$?
    [ "$rc" -eq 0 ] || fail "publish exited $rc after the outage: $(cat "$work/publish-$i.err")"
    grep -q "acked=$n failed=0" "$work/publish-$i.out" || fail "publish summary: $(cat "$work/publish-$i.out")"
    ;;
  *) fail "unknown mode $mode" ;;
  esac
  check_trial "$i" "$topic" "$store" "$ledger"
done
log "TOTAL trials=$totals_trials accepted=$totals_accepted lost=$totals_lost duplicates=$totals_dups"
