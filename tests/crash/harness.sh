#!/usr/bin/env bash
# Crash and outage harness: proves "nothing accepted is lost" with the real
# `ackbox` CLI, a real broker and an independent consumer.
#
#   harness.sh BROKER MODE CLI FIXTURE_ENV ADAPTER
#     BROKER       the transport's name, for messages and result lines
#     MODE         kill9   `ackbox publish` SIGKILLed at a random moment, then
#                          `ackbox relay --until-empty` delivers the rest
#                  outage  the broker stopped for CRASH_OUTAGE_S seconds
#                          mid-stream and started again; publish must finish
#                          with every message acked and none FAILED
#                  point   CRASH_CLI (built with crash points) publishes and
#                          dies at CRASH_POINT; then `ackbox relay` as in kill9
#     CLI          the ackbox binary
#     FIXTURE_ENV  the env file the broker fixture wrote
#     ADAPTER      the transport's crash_adapter.sh (in its plugin folder,
#                  declared with ackbox_add_crash_tests): sourced after
#                  FIXTURE_ENV, it sets
#                    crash_url         the transport URL
#                    crash_sets        extra CLI arguments (--set KEY=VALUE ...)
#                    crash_tag         (optional) a word for the result lines
#                  and defines
#                    consumer_start TOPIC    before publishing: an independent
#                                            consumer, or what it needs
#                    consumer_collect TOPIC WANT
#                                            prints the first word of every
#                                            message that arrived, one per line
#                                            (WANT: the ledger's numbers, sorted)
#                    broker_down             the fault: the broker stops
#                    broker_up PUBPID TOPIC  it starts again with its data
#                  It may also define
#                    crash_prepare TOPIC...  once, before the first trial, with
#                                            every trial's topic
#                    broker_evidence TOPIC   a losing trial: copy what the
#                                            broker says about it into $work
#                  broker_up gets the trial's number as a third argument and
#                  may leave "$work/confirmed-before-kill-TRIAL" and
#                  "$work/queue-after-restart-TRIAL" (added to the result line).
#                  It may use $work (scratch dir), $size (payload bytes), $n,
#                  $cli, $store, $ledger, $trials, fail MESSAGE, and append
#                  background pids to pids.
#                  Optional:
#                    trial_sets        consumer_start may fill this array with
#                                      extra CLI arguments for the trial's
#                                      publish and relay (a stream named
#                                      after TOPIC, say); emptied before it
#                    crash_no_duplicates=1
#                                      the broker drops a resend of a message
#                                      it holds (by the id on the wire): a
#                                      duplicate read back fails the trial
#                    trial_note TRIAL  prints " key=value" fields to append
#                                      to the trial's result line (it may
#                                      read $work/publish-TRIAL.err and
#                                      $work/relay-TRIAL.err)
#   Environment: CRASH_TRIALS (kill9 trials, 3), CRASH_KILL_FROM (store: the
#   kill9 delay counts from the store file's creation; start: from the
#   launch), CRASH_OUTAGE_TRIALS (1),
#   CRASH_N (messages per trial, 5000), CRASH_OUTAGE_S (30),
#   CRASH_RESULTS (file to append result lines to),
#   CRASH_CONTINUE=1 (a trial that lost messages is recorded and the next
#   one runs; the exit status is still non-zero at the end),
#   CRASH_STORE_URL (a redis://HOST:PORT/DB server for the stores, a prefix
#   per trial; default: a SQLite file per trial); the adapter may
#   read more (AMQP: CRASH_AMQP_DECLARE, AMQP_DRAIN).
# A losing trial keeps its files (store, ledger, what publish said, what the
# broker said) in a directory it names.
#
# The ledger: `ackbox publish --ledger` appends each range of sequence
# numbers as soon as the store has accepted it. Every number in the ledger
# must be read back by the consumer: lost = ledger - received must be 0.
# Duplicates are counted and reported. No row may be left sending or
# retrying, and none may be FAILED.
set -euo pipefail
broker=${1:?broker} mode=${2:?mode} cli=${3:?cli} envfile=${4:?fixture env} adapter=${5:?adapter}
trials=${CRASH_TRIALS:-3}
[ "$mode" = outage ] && trials=${CRASH_OUTAGE_TRIALS:-1}
[ "$mode" = point ] && trials=1
n=${CRASH_N:-5000}
outage=${CRASH_OUTAGE_S:-30}
size=32
[ -f "$envfile" ] || { echo "harness: broker fixture did not start ($envfile missing)" >&2; exit 1; }
[ -f "$adapter" ] || { echo "harness: no crash adapter $adapter" >&2; exit 1; }
store_base=${CRASH_STORE_URL:-}
case "$store_base" in
'') ;;
redis://*)
  command -v redis-cli > /dev/null || { echo "harness: CRASH_STORE_URL needs redis-cli" >&2; exit 1; }
  redis-cli -u "$store_base" ping | grep -q PONG ||
    { echo "harness: no redis answers at $store_base" >&2; exit 1; } ;;
*) echo "harness: CRASH_STORE_URL must be redis://HOST:PORT/DB, not $store_base" >&2; exit 1 ;;
esac
store_tag=${store_base:+ store=redis}
store_url() { # trial
  if [ -n "$store_base" ]; then echo "$store_base?prefix=crash_${mode}_$$_$1"
  else echo "sqlite://$work/outbox-$1.db"; fi
}
# whether trial's store exists yet (its file; its meta hash, written by the first insert)
store_exists() { # trial
  if [ -n "$store_base" ]; then
    [ "$(redis-cli -u "$store_base" exists "{crash_${mode}_$$_$1}:meta")" = 1 ]
  else [ -e "$work/outbox-$1.db" ]; fi
}
# shellcheck disable=SC1090
. "$envfile"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/crash-$broker-$mode-XXXXXX")
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
# the transport's side: crash_url, crash_sets, the consumer, the fault
# shellcheck disable=SC1090
. "$adapter"
# shellcheck disable=SC2154 # crash_url and crash_sets come from the adapter
url=$crash_url
sets+=("${crash_sets[@]}")

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
  local line="broker=$broker mode=$mode${CRASH_POINT:+:$CRASH_POINT}${crash_tag:+ $crash_tag}$store_tag trial=$i n=$n accepted=$accepted received=$received lost=$lost duplicates=$dups sending=$sending retrying=$retrying failed=$failed"
  [ -s "$work/queue-after-restart-$i" ] &&
    line+=" confirmed_before_kill>=$(cat "$work/confirmed-before-kill-$i") after_restart=$(head -1 "$work/queue-after-restart-$i")"
  if declare -F trial_note >/dev/null; then line="$line$(trial_note "$i")"; fi
  log "$line"
  [ -n "${CRASH_RESULTS:-}" ] && echo "$line" >> "$CRASH_RESULTS"
  if [ "$lost" -ne 0 ]; then
    comm -23 "$want" <(sort -u "$got") | sort -n > "$work/lost-$i"
    keep=1
    declare -F broker_evidence > /dev/null && broker_evidence "$t"
    local what
    what="trial $i lost $lost accepted message(s), numbers $(ranges < "$work/lost-$i"); publish said: $(grep -h "disconnected" "$work/publish-$i.err" 2>/dev/null | head -3 | tr '\n' ' ')$(cat "$work/publish-$i.out" "$work/publish-$i.err" 2>/dev/null | tail -3 | tr '\n' ' ')"
    [ "${CRASH_CONTINUE:-0}" = 1 ] || fail "$what"
    echo "harness $broker/$mode: LOSS: $what" >&2
    losses=$((losses + 1))
  fi
  [ "$extra" -eq 0 ] || fail "trial $i received $extra message(s) that were never published"
  [ "$sending" = 0 ] && [ "$retrying" = 0 ] || fail "trial $i left rows pending: $st"
  [ "$failed" = 0 ] || fail "trial $i has $failed FAILED message(s): $("$cli" list --store "$store" --state failed --limit 3)"
  [ "${crash_no_duplicates:-0}" != 1 ] || [ "$dups" -eq 0 ] ||
    fail "trial $i: $dups duplicate(s) read back, from a broker that drops resends by message id"
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

if declare -F crash_prepare > /dev/null; then
  topics=()
  for i in $(seq 1 "$trials"); do topics+=("crash_${mode}_$$_$i"); done
  crash_prepare "${topics[@]}"
fi
for i in $(seq 1 "$trials"); do
  topic="crash_${mode}_$$_$i"
  store=$(store_url "$i")
  ledger="$work/ledger-$i"
  : > "$ledger"
  trial_sets=()
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
    # (odd trials while publish is still storing, even ones while it sends).
    # Counted from the store file's creation (the first insert): on a loaded
    # machine the CLI takes longer than the whole window to start, and a
    # kill before it stores anything proves nothing (CRASH_KILL_FROM=start:
    # from the launch, as before).
    if [ "${CRASH_KILL_FROM:-store}" = store ]; then
      deadline=$((SECONDS + 30))
      until store_exists "$i" || ! kill -0 "$pub" 2>/dev/null || [ $SECONDS -ge $deadline ]; do
        sleep 0.005
      done
    fi
    if [ $((i % 2)) -eq 1 ]; then
      delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", (r % 300) / 1000 }')
    else
      delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.08 + (r % 700) / 1000 }')
    fi
    sleep "$delay"
    kill -9 "$pub" 2>/dev/null || true
    wait "$pub" 2>/dev/null || true
    log "trial $i: publish killed after ${delay}s with $(awk '{s += $2 - $1 + 1} END {print s + 0}' "$ledger") accepted"
    if ! store_exists "$i"; then
      # killed before it created its store: then it cannot have accepted anything
      [ ! -s "$ledger" ] || fail "trial $i: a ledger but no store file"
      log "trial $i: killed before the store existed; nothing accepted, nothing to deliver"
      [ -n "${CRASH_RESULTS:-}" ] &&
        echo "broker=$broker mode=$mode$store_tag trial=$i n=$n accepted=0 received=0 lost=0 duplicates=0 no_store=1" >> "$CRASH_RESULTS"
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
