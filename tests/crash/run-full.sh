#!/usr/bin/env bash
# The documented long run of the crash suite (docs/reliability.md): per broker,
# CRASH_TRIALS kill -9 trials and CRASH_OUTAGE_TRIALS broker outages of
# CRASH_OUTAGE_S seconds (defaults 100, 100 and 2), the three AMQP crash
# points, and NETFAULT_TRIALS runs (default 0) of the network-fault scenarios
# (tests/crash/netfault.sh; NETFAULT_SCENARIOS, default all six); each
# broker is started here on loopback and stopped at the end.
# A trial that loses messages is recorded, its files kept, and the run goes on;
# the tables at the end sum trials, accepted, lost and duplicates per broker
# and mode (with the wall-clock seconds each part took), and per broker and
# network fault; the exit status is 1 if anything failed.
#   run-full.sh [BUILD_DIR]   (default build, configured by scripts/test.sh)
# RUN_BROKERS ("amqp mqtt kafka") and RUN_MODES ("kill9 outage point
# netfault") pick a part; RUN_STORE=redis keeps every trial's store on a
# private redis-server (default: a SQLite file each). On a shared machine,
# run it at low priority:
# nice -n 19 bash ...
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-${BUILD_DIR:-build}}
tools="$build/crash-tools.env"
[ -f "$tools" ] || { echo "run-full: no $tools; configure and build first (scripts/test.sh)" >&2; exit 2; }
# shellcheck disable=SC1090
. "$tools"
export AMQP_DRAIN CRASH_CONTINUE=1
export CRASH_TRIALS=${CRASH_TRIALS:-100} CRASH_OUTAGE_TRIALS=${CRASH_OUTAGE_TRIALS:-100}
export CRASH_OUTAGE_S=${CRASH_OUTAGE_S:-2}
case "$build" in /*) abs=$build ;; *) abs=$PWD/$build ;; esac
export ACKBOX_TEST_TMP=${ACKBOX_TEST_TMP:-$abs/testtmp}
export CRASH_RESULTS=${CRASH_RESULTS:-$abs/crash-results.txt}
export NETFAULT_RESULTS=${NETFAULT_RESULTS:-$abs/netfault-results.txt}
netfault_trials=${NETFAULT_TRIALS:-0}
read -r -a netfault_scenarios <<< "${NETFAULT_SCENARIOS:-reset blackhole latency latency-start trickle unreachable}"
times=${RUN_FULL_TIMES:-$build/run-full-times.txt}
mkdir -p "$ACKBOX_TEST_TMP"
fx=$(mktemp -d "$ACKBOX_TEST_TMP/run-full-XXXXXX")

# Each transport's fixture and crash adapter, in its plugin folder.
fixture() { # broker
  case "$1" in
  amqp) echo brokers/amqp/tests/rabbitmq.sh ;;
  mqtt) echo brokers/mqtt/tests/mosquitto.sh ;;
  kafka) echo brokers/kafka/tests/kafka-mock.sh ;;
  redis) echo store/redis/tests/redis.sh ;;
  *) echo "run-full: unknown broker $1" >&2; exit 2 ;;
  esac
}
adapter() { echo "brokers/$1/tests/crash_adapter.sh"; }

started=()
# shellcheck disable=SC2317 # run by the EXIT trap
stop_all() {
  for d in "${started[@]}"; do
    bash "$(fixture "${d%%-*}")" stop "$fx/$d" > /dev/null 2>&1 || true
  done
  rm -rf "$fx"
}
trap stop_all EXIT
# RUN_STORE=redis: every trial's store on one private redis-server (a prefix each)
if [ "${RUN_STORE:-sqlite}" = redis ]; then
  bash store/redis/tests/redis.sh start "$fx/redis" > /dev/null
  started+=("redis")
  CRASH_STORE_URL="$(. "$fx/redis/env" && echo "$REDIS_URL")/0"
  export CRASH_STORE_URL
elif [ "${RUN_STORE:-sqlite}" != sqlite ]; then
  echo "run-full: RUN_STORE is sqlite or redis, not $RUN_STORE" >&2; exit 2
fi
start() { # broker dir-name [verb]
  if [ "$1" = kafka ]; then
    bash "$(fixture kafka)" "${3:-start}" "$fx/$2" "${KAFKA_MOCK_CLUSTER:?}"
  else
    bash "$(fixture "$1")" start "$fx/$2"
  fi
  started+=("$2")
}
timed() { # label command...
  local t0=$SECONDS rc=0
  "${@:2}" || rc=$?
  echo "$1 $((SECONDS - t0))" >> "$times"
  return "$rc"
}

rm -f "$CRASH_RESULTS" "$NETFAULT_RESULTS" "$times"
status=0
for b in ${RUN_BROKERS:-amqp mqtt kafka}; do
  start "$b" "$b"
  for m in ${RUN_MODES:-kill9 outage point netfault}; do
    case "$m" in
    point)
      [ "$b" = amqp ] || continue
      for p in after_persist after_send after_confirm; do
        CRASH_POINT=$p CRASH_CLI=${ACKBOX_CRASHPOINTS:?} \
          timed "$b point:$p" bash tests/crash/harness.sh "$b" point "$ACKBOX_CLI" "$fx/$b/env" \
          "$(adapter "$b")" || status=1
      done
      ;;
    netfault)
      [ "$netfault_trials" -gt 0 ] || continue
      env=$fx/$b/env
      if [ "$b" = kafka ]; then
        # Kafka clients go where the cluster advertises: a cluster of its own
        # whose brokers advertise the proxy's ports
        start kafka kafka-proxied start-proxied
        env=$fx/kafka-proxied/env
      fi
      for s in "${netfault_scenarios[@]}"; do
        for t in $(seq 1 "$netfault_trials"); do
          timed "$b netfault:$s" bash tests/crash/netfault.sh "$b" "$ACKBOX_CLI" "$env" \
            "${FAULTPROXY:?}" "$s" || { status=1; echo "run-full: $b netfault $s trial $t failed" >&2; }
        done
      done
      ;;
    *)
      timed "$b $m" bash tests/crash/harness.sh "$b" "$m" "$ACKBOX_CLI" "$fx/$b/env" \
        "$(adapter "$b")" || status=1
      ;;
    esac
  done
done
echo "crash trials (seconds: wall clock of the whole part, broker restarts included)"
awk 'FNR == NR { s[$1 " " $2] += $3; next }
     { delete v; for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
       k = v["broker"] " " v["mode"]; t[k]++; a[k] += v["accepted"]; l[k] += v["lost"]; d[k] += v["duplicates"] }
     END { for (k in t) { split(k, b, " "); printf "%-6s %-20s %7d %9d %5d %10d %8d\n", b[1], b[2], t[k], a[k], l[k], d[k], s[k] } }' \
  "$times" "$CRASH_RESULTS" 2>/dev/null | sort |
  (printf "%-6s %-20s %7s %9s %5s %10s %8s\n" broker mode trials accepted lost duplicates seconds; cat)
if [ -s "$NETFAULT_RESULTS" ]; then
  echo "network faults (noticed: ackbox's first disconnect or time-out line after a blackhole began; min-max)"
  awk '{ delete v; for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
         k = v["broker"] " " v["scenario"]; t[k]++; a[k] += v["accepted"]; l[k] += v["lost"]
         d[k] += v["duplicates"]; f[k] += v["failed"]; s[k] += v["seconds"]
         if ("noticed_s" in v) { x = v["noticed_s"] + 0
           if (!(k in lo) || x < lo[k]) lo[k] = x; if (!(k in hi) || x > hi[k]) hi[k] = x } }
       END { for (k in t) { split(k, b, " ")
         printf "%-6s %-12s %7d %9d %5d %10d %6d %8d %s\n", b[1], b[2], t[k], a[k], l[k], d[k], f[k], s[k],
           (k in lo) ? lo[k] "-" hi[k] : "-" } }' "$NETFAULT_RESULTS" | sort |
    (printf "%-6s %-12s %7s %9s %5s %10s %6s %8s %s\n" broker scenario trials accepted lost duplicates failed seconds noticed_s; cat)
fi
exit "$status"
