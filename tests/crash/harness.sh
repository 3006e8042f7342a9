#!/usr/bin/env bash
# Crash and outage harness: proves "nothing accepted is lost" with the real
# `ackbox` CLI, a real broker and an independent consumer.
#
#   harness.sh BROKER MODE CLI FIXTURE_ENV
#     BROKER       amqp | mqtt | kafka
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
#   CRASH_RESULTS (file to append result lines to),
#   CRASH_AMQP_DECLARE (before: the harness declares every trial's queue
#   before the first trial and restarts RabbitMQ cleanly, so that the
#   declarations are on disk before any fault; relay: the relay declares
#   each queue on its first send, a few hundred ms before the fault, as in
#   the losing trial of docs/reliability.md),
#   AMQP_DRAIN (tests/tools/amqp-drain: reads a queue in well under a second;
#   without it amqp-consume, which forks a command per message),
#   CRASH_CONTINUE=1 (a trial that lost messages is recorded and the next
#   one runs; the exit status is still non-zero at the end).
# A losing trial keeps its files (store, ledger, what publish said, the
# broker's log and, for AMQP outages, the queues right after the restart)
# in a directory it names.
#
# The ledger: `ackbox publish --ledger` appends each range of sequence
# numbers as soon as the store has accepted it. Every number in the ledger
# must be read back by the consumer (amqp-consume, mosquitto_sub, kcat):
# lost = ledger - received must be 0. Duplicates are counted and reported.
# No row may be left sending or retrying, and none may be FAILED.
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
[ -f "$envfile" ] || { echo "harness: broker fixture did not start ($envfile missing)" >&2; exit 1; }
# shellcheck disable=SC1090
. "$envfile"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/crash-$broker-$mode-XXXXXX")
declare_mode=${CRASH_AMQP_DECLARE:-before}
pids=()
keep=0 losses=0
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then
    echo "harness $broker/$mode: evidence kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() { keep=1; echo "harness $broker/$mode: FAIL: $*" >&2; exit 1; }
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
amqp)  url=$AMQP_URL
       # declared ahead, the queue is not declared again: if RabbitMQ ever
       # lost it, publishes would come back unroutable, not fill a new one
       [ "$declare_mode" = relay ] && sets+=(--set amqp.declare_queue=true) ;;
mqtt)  url=$MQTT_URL ;;
kafka) url=$KAFKA_URL ;;
*) fail "unknown broker $broker" ;;
esac

# ---- the independent consumers ----
sub_pid=""
# RabbitMQ SIGKILLed within about 2 s of a durable queue's declaration can
# come back without the queue, and with it go the messages it confirmed in
# it: mnesia logs the declaration's commit record, but its "committed"
# decision only later (docs/reliability.md, tests/crash/amqp-declare-kill.sh).
# Applications declare their queues ahead of traffic; so does the harness:
# every trial's queue before the first trial, then a clean restart (SIGTERM),
# after which each declaration is on disk.
amqp_declare_ahead() {
  [ "$broker" = amqp ] && [ "$declare_mode" = before ] || return 0
  for i in $(seq 1 "$trials"); do
    amqp-declare-queue --url="$AMQP_URL" -q "crash_${mode}_$$_$i" -d > /dev/null ||
      fail "cannot declare queue crash_${mode}_$$_$i"
  done
  bash "$fixtures/rabbitmq.sh" term "$RABBITMQ_FIXTURE_DIR"
  bash "$fixtures/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" > /dev/null
}

consumer_start() { # topic
  [ "$broker" = amqp ] && return 0 # declared ahead, or by the relay (amqp.declare_queue)
  [ "$broker" = mqtt ] || return 0
  # a persistent session subscribed before anything is published; it
  # reconnects by itself after a broker restart
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" -E
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" > "$work/$1.mqtt" 2>/dev/null &
  sub_pid=$!
  pids+=("$sub_pid")
}

# The number of messages in queue $1, or "absent".
amqp_count() {
  if [ -n "${AMQP_DRAIN:-}" ]; then
    "$AMQP_DRAIN" --count "$AMQP_URL" "$1"
  else
    bash "$fixtures/rabbitmq.sh" queues "$RABBITMQ_FIXTURE_DIR" |
      awk -v q="$1" '$1 == q {print $2; found = 1} END {if (!found) print "absent"}'
  fi
}

# Prints the sequence number of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  local t=$1 want=$2
  case "$broker" in
  amqp)
    local count
    count=$(amqp_count "$t")
    # no queue: nothing was ever sent (the relay declares it on the first
    # send); every ledger number then counts as lost below
    [ "$count" != absent ] && [ "$count" -gt 0 ] || return 0
    if [ -n "${AMQP_DRAIN:-}" ]; then
      timeout 300 "$AMQP_DRAIN" "$AMQP_URL" "$t" | awk '{print $1}'
    else
      timeout 300 amqp-consume --url="$AMQP_URL" -q "$t" -c "$count" cat | fold -w "$size" | awk '{print $1}'
    fi
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
  esac
}

# ---- checks ----
# "lo..hi" per run of consecutive numbers read on stdin (sorted), at most 8
ranges() {
  awk 'NR == 1 {lo = $1; hi = $1; next}
       $1 == hi + 1 {hi = $1; next}
       {out = out sep lo ".." hi; sep = ", "; lo = $1; hi = $1; n++}
       END {if (NR) {out = out sep lo ".." hi; n++}
            if (n > 8) {split(out, a, ", "); out = a[1] ", ... (" n " runs), " a[n]}
            print out " (" NR " numbers)"}'
}

# A losing trial: what the broker said about the topic goes with the files.
keep_evidence() { # trial topic
  keep=1
  case "$broker" in
  amqp)  cp "$RABBITMQ_FIXTURE_DIR"/log/*.log "$work/" 2>/dev/null || true
         grep -h "$2" "$RABBITMQ_FIXTURE_DIR"/log/*.log > "$work/broker-log-$1" 2>/dev/null || true ;;
  mqtt)  cp "$MOSQUITTO_FIXTURE_DIR/log" "$work/mosquitto.log" 2>/dev/null || true ;;
  kafka) cp "$KAFKA_FIXTURE_DIR/log" "$work/kafka-mock.log" 2>/dev/null || true ;;
  esac
}
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
  local line="broker=$broker mode=$mode${CRASH_POINT:+:$CRASH_POINT}$([ "$broker" = amqp ] && echo " declare=$declare_mode") trial=$i n=$n accepted=$accepted received=$received lost=$lost duplicates=$dups sending=$sending retrying=$retrying failed=$failed$([ -s "$work/queue-after-restart-$i" ] && echo " confirmed_before_kill>=$(cat "$work/confirmed-before-kill-$i") after_restart=$(head -1 "$work/queue-after-restart-$i")")"
  log "$line"
  [ -n "${CRASH_RESULTS:-}" ] && echo "$line" >> "$CRASH_RESULTS"
  if [ "$lost" -ne 0 ]; then
    comm -23 "$want" <(sort -u "$got") | sort -n > "$work/lost-$i"
    keep_evidence "$i" "$t"
    local what
    what="trial $i lost $lost accepted message(s), numbers $(ranges < "$work/lost-$i"); publish said: $(grep -h "disconnected" "$work/publish-$i.err" 2>/dev/null | head -3 | tr '\n' ' ')$(cat "$work/publish-$i.out" "$work/publish-$i.err" 2>/dev/null | tail -3 | tr '\n' ' ')"
    [ "${CRASH_CONTINUE:-0}" = 1 ] || fail "$what"
    echo "harness $broker/$mode: LOSS: $what" >&2
    losses=$((losses + 1))
  fi
  [ "$extra" -eq 0 ] || fail "trial $i received $extra message(s) that were never published"
  [ "$sending" = 0 ] && [ "$retrying" = 0 ] || fail "trial $i left rows pending: $st"
  [ "$failed" = 0 ] || fail "trial $i has $failed FAILED message(s): $("$cli" list --store "$store" --state failed --limit 3)"
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
  mqtt)  bash "$fixtures/mosquitto.sh" term "$MOSQUITTO_FIXTURE_DIR" ;; # see docs/brokers/mqtt.md
  kafka) bash "$fixtures/kafka-mock.sh" down "$KAFKA_FIXTURE_DIR" ;;
  esac
}

broker_up() { # publisher pid, topic, trial (mqtt: held while the subscriber re-attaches)
  case "$broker" in
  amqp)
    # The publisher is held while RabbitMQ comes back, so that the queue is
    # counted as the broker recovered it, before anything is resent. Nothing
    # can be confirmed while the broker is down: the accepted messages no
    # longer in the store were confirmed before the kill, and the recovered
    # queue must hold at least that many (packed members acked only in the
    # publisher's memory still count as stored: a lower bound).
    kill -STOP "$1" 2>/dev/null || true
    local pending accepted_now
    pending=$("$cli" status --store "$store" --json | jq -r '.sending + .retrying')
    accepted_now=$(awk '{s += $2 - $1 + 1} END {print s + 0}' "$ledger")
    echo $((accepted_now - pending)) > "$work/confirmed-before-kill-$3"
    bash "$fixtures/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" >/dev/null
    amqp_count "$2" > "$work/queue-after-restart-$3" 2>&1 || true
    kill -CONT "$1" 2>/dev/null || true
    ;;
  kafka) bash "$fixtures/kafka-mock.sh" up "$KAFKA_FIXTURE_DIR" ;;
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

amqp_declare_ahead
for i in $(seq 1 "$trials"); do
  topic="crash_${mode}_$$_$i"
  store="sqlite://$work/outbox-$i.db"
  ledger="$work/ledger-$i"
  : > "$ledger"
  consumer_start "$topic"
  pub_cli=$cli
  [ "$mode" = point ] && pub_cli=${CRASH_CLI:?point mode needs CRASH_CLI}
  # odd kill9 trials store in transactions of 10, so that storing takes long
  # enough (about half a second) for the kill to land in the middle of it
  batch=500
  [ "$mode" = kill9 ] && [ $((i % 2)) -eq 1 ] && batch=10
  ACKBOX_CRASH_AT=${CRASH_POINT:-} \
  "$pub_cli" publish --store "$store" --transport "$url" --topic "$topic" --count "$n" --size "$size" \
    --batch "$batch" --ledger "$ledger" "${sets[@]}" "${pub_sets[@]}" > "$work/publish-$i.out" 2> "$work/publish-$i.err" &
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
      [ -n "${CRASH_RESULTS:-}" ] &&
        echo "broker=$broker mode=$mode trial=$i n=$n accepted=0 received=0 lost=0 duplicates=0 no_store=1" >> "$CRASH_RESULTS"
      totals_trials=$((totals_trials + 1))
      continue
    fi
    rc=0
    "$cli" relay --store "$store" --transport "$url" --until-empty --max-seconds 120 "${sets[@]}" \
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
    "$cli" relay --store "$store" --transport "$url" --until-empty --max-seconds 120 "${sets[@]}" \
      > "$work/relay-$i.out" 2> "$work/relay-$i.err" || rc=$?
    [ "$rc" -eq 0 ] || fail "relay --until-empty exited $rc: $(cat "$work/relay-$i.err")"
    ;;
  outage)
    wait_ledger "$ledger" "$pub"
    broker_down
    log "trial $i: broker down for ${outage}s mid-stream"
    sleep "$outage" # the length of the outage is the fault being injected
    broker_up "$pub" "$topic" "$i"
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
[ "$losses" -eq 0 ] || { echo "harness $broker/$mode: FAIL: $losses trial(s) lost messages" >&2; exit 1; }
