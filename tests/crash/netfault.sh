#!/usr/bin/env bash
# Network faults between ackbox and a broker: the real CLI publishes through
# tests/tools/faultproxy.py (loopback only), an independent consumer reads
# the broker directly, and the ledger says what was accepted.
#
#   netfault.sh BROKER CLI FIXTURE_ENV PROXY [SCENARIO...]
#     BROKER       amqp | mqtt | kafka (kafka: a mock cluster started with
#                  kafka-mock.sh start-proxied, whose brokers advertise the
#                  proxy's addresses)
#     CLI          the ackbox binary; PROXY tests/tools/faultproxy.py
#     SCENARIO     reset | blackhole | latency | latency-start | trickle |
#                  unreachable (default: all six, in that order)
#   reset        every connection reset (RST) once mid-stream
#   blackhole    mid-stream, the connection goes silent both ways and new
#                connections hang, for NETFAULT_BLACKHOLE_S (15) seconds
#   latency      200 ms added each way, from mid-stream to the end
#   latency-start  200 ms each way before the publisher starts (its first
#                connect is behind it); 500 messages
#   trickle      16 bytes, then 1 ms, each way, for the whole run
#   unreachable  mid-stream, connections reset and refused for
#                NETFAULT_UNREACHABLE_S (60) seconds
# Environment: NETFAULT_N (messages per scenario, 5000; trickle sends 300),
# NETFAULT_SETS (extra --set KEY=VALUE words for publish; default: the keys
# that notice a silent connection, see below), NETFAULT_RESULTS (file to
# append result lines to), AMQP_DRAIN (brokers/amqp/tests/amqp-drain), NETFAULT_KEEP=1
# (keep the files: the proxy log, what publish wrote, with times),
# CRASH_STORE_URL (a redis://HOST:PORT/DB server for the stores, a prefix per
# scenario, as tests/crash/harness.sh takes it; default: a SQLite file each).
#
# Each scenario must end with every accepted message received (lost 0), the
# publish summary "acked=N failed=0", nothing left pending and nothing
# FAILED: a fault that kept messages from the broker must not fail them.
# For the blackhole the result line says how long ackbox took to notice
# (its first disconnect or time-out line after the fault began) and the key
# that bounds it: amqp.heartbeat (rabbitmq-c gives up after two silent
# heartbeat intervals), mqtt.keepalive (paho: no PINGRESP within a keepalive
# interval), kafka.socket.timeout.ms (librdkafka: a request unanswered that
# long). With the defaults (30 s, 30 s, 60 s) a silent connection outlives
# retry.timeout (10 s), and the core counts each unanswered attempt as a
# failed one (outcome TIMEOUT); NETFAULT_SETS="" shows it.
set -euo pipefail
broker=${1:?broker} cli=${2:?cli} envfile=${3:?fixture env} proxy=${4:?faultproxy.py}
shift 4
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(reset blackhole latency latency-start trickle unreachable)
n=${NETFAULT_N:-5000}
blackhole_s=${NETFAULT_BLACKHOLE_S:-15}
unreachable_s=${NETFAULT_UNREACHABLE_S:-60}
[ -f "$envfile" ] || { echo "netfault: broker fixture did not start ($envfile missing)" >&2; exit 1; }
# shellcheck disable=SC1090
. "$envfile"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/netfault-$broker-XXXXXX")
pids=()
keep=${NETFAULT_KEEP:-0}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then echo "netfault $broker: files kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { keep=1; echo "netfault $broker: FAIL: $*" >&2; exit 1; }
# a command that fails under set -e says so, instead of ending the run silently
set -E
trap 'fail "line $LINENO: \"$BASH_COMMAND\" failed"' ERR
log() { echo "netfault $broker: $*"; }
store_base=${CRASH_STORE_URL:-}
case "$store_base" in
'') ;;
redis://*)
  command -v redis-cli > /dev/null || fail "CRASH_STORE_URL needs redis-cli"
  redis-cli -u "$store_base" ping | grep -q PONG || fail "no redis answers at $store_base" ;;
*) fail "CRASH_STORE_URL must be redis://HOST:PORT/DB, not $store_base" ;;
esac
store_url() { # scenario
  if [ -n "$store_base" ]; then echo "$store_base?prefix=netfault_${1}_$$"
  else echo "sqlite://$work/$1.db"; fi
}

case "$broker" in
amqp)
  routes=("0=$AMQP_PORT")
  detect_key=amqp.heartbeat; detect_default="2s"
  marker='transport disconnected|connection to .* lost'
  ;;
mqtt)
  routes=("0=$MQTT_PORT")
  detect_key=mqtt.keepalive; detect_default="2s"
  marker='transport disconnected|connection to .* lost|connection lost'
  ;;
kafka)
  [ -n "${KAFKA_PROXY_ROUTES:-}" ] ||
    fail "the kafka fixture was not started behind a proxy (kafka-mock.sh start-proxied)"
  read -r -a routes <<< "$KAFKA_PROXY_ROUTES"
  detect_key=kafka.socket.timeout.ms; detect_default="3000"
  marker='[Tt]imed out|REQTMOUT|Disconnected|transport disconnected'
  ;;
*) fail "unknown broker $broker" ;;
esac
if [ -n "${NETFAULT_SETS+set}" ]; then
  read -r -a extra <<< "$NETFAULT_SETS"
else
  extra=(--set "$detect_key=$detect_default")
fi

# ---- the proxy ----
python3 "$proxy" serve --log "$work/proxy.log" "${routes[@]}" > "$work/proxy.out" 2> "$work/proxy.err" &
pids+=($!)
deadline=$((SECONDS + 30))
until [ "$(wc -l < "$work/proxy.out")" -gt ${#routes[@]} ]; do
  kill -0 "${pids[0]}" 2>/dev/null || fail "faultproxy exited: $(cat "$work/proxy.err")"
  [ $SECONDS -lt $deadline ] || fail "faultproxy did not listen within 30 s"
  sleep 0.05
done
ctl_port=$(sed -n 's/^ctl 127.0.0.1://p' "$work/proxy.out")
# One command to the proxy's control port, its one-line answer on stdout.
px_ask() {
  local answer
  exec 9<>"/dev/tcp/127.0.0.1/$ctl_port" || fail "proxy control port closed"
  echo "$*" >&9
  IFS= read -r answer <&9 || true
  exec 9<&-
  echo "$answer"
}
px() { [ "$(px_ask "$@")" = ok ] || fail "proxy command '$*' refused"; }
px_stat() { px_ask stats | tr ' ' '\n' | sed -n "s/^$1=//p"; }
case "$broker" in
amqp)  url="amqp://guest:guest@$(sed -n 2p "$work/proxy.out")" ;;
mqtt)  url="mqtt://$(sed -n 2p "$work/proxy.out")" ;;
kafka) url="kafka://$KAFKA_BOOTSTRAP" ;; # the brokers advertise the proxy
esac

# Prefixes each line with the wall clock (s.us), for the detection time.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

# ---- consumers, straight to the broker ----
sub_pid=""
consumer_start() { # topic
  case "$broker" in
  amqp) amqp-declare-queue --url="$AMQP_URL" -q "$1" -d > /dev/null || fail "cannot declare queue $1" ;;
  mqtt)
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "nf-$1" -t "$1" -E
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "nf-$1" -t "$1" > "$work/$1.mqtt" 2>/dev/null &
    sub_pid=$!
    pids+=("$sub_pid")
    ;;
  esac
}
consumer_collect() { # topic want
  case "$broker" in
  amqp)
    if [ -n "${AMQP_DRAIN:-}" ]; then
      timeout 120 "$AMQP_DRAIN" "$AMQP_URL" "$1" | awk '{print $1}'
    else
      local count
      count=$(bash "$(dirname "$0")/../../brokers/amqp/tests/rabbitmq.sh" queues "$RABBITMQ_FIXTURE_DIR" | awk -v q="$1" '$1 == q {print $2}')
      [ "${count:-0}" -gt 0 ] || return 0
      timeout 300 amqp-consume --url="$AMQP_URL" -q "$1" -c "$count" cat | fold -w 32 | awk '{print $1}'
    fi
    ;;
  mqtt)
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
      [ -n "$(comm -23 "$2" <(awk '{print $1}' "$work/$1.mqtt" | sort -u))" ] || break
      sleep 0.2
    done
    kill "$sub_pid" 2>/dev/null || true
    wait "$sub_pid" 2>/dev/null || true
    awk '{print $1}' "$work/$1.mqtt"
    ;;
  kafka)
    timeout 120 kcat -C -b "$KAFKA_BOOTSTRAP" -t "$1" -o beginning -e -q -f '%s\n' | awk '{print $1}'
    ;;
  esac
}

# Waits (bounded) until the publisher is mid-stream: something accepted and
# at least `bytes` sent through the proxy, and the broker has answered.
wait_midstream() { # ledger pid bytes down0
  local deadline=$((SECONDS + 60))
  until [ -s "$1" ] && [ "$(px_stat up)" -ge "$3" ] && [ "$(px_stat down)" -gt "$4" ]; do
    kill -0 "$2" 2>/dev/null || fail "publish ended before the fault (too few messages?)"
    [ $SECONDS -lt $deadline ] || fail "publish not mid-stream within 60 s"
    sleep 0.005
  done
}

# The fault landed while the publisher still had work: it was running, and
# had not yet had everything confirmed.
check_midstream() { # pid out
  kill -0 "$1" 2>/dev/null || fail "publish had ended when the fault began: $(cat "$2")"
}

# The publisher is held (SIGSTOP) from the moment it is seen mid-stream
# until the fault is in place, so that a fast machine cannot finish the run
# in between; held_fault PID OUT COMMAND... injects the fault and lets it go on.
held_fault() {
  local pid=$1 out=$2
  shift 2
  kill -STOP "$pid" 2>/dev/null || true
  check_midstream "$pid" "$out"
  px "$@"
  kill -CONT "$pid" 2>/dev/null || true
}

results=()
run() { # scenario
  local sc=$1 count=$n topic="netfault_${1}_$$" store ledger="$work/$1.ledger"
  store=$(store_url "$sc")
  local started=$SECONDS
  [ "$sc" = trickle ] && count=$(( n < 300 ? n : 300 ))
  [ "$sc" = latency-start ] && count=$(( n < 500 ? n : 500 ))
  # Kafka takes 5 000 in about a second on an idle machine: give the
  # mid-stream faults a stream long enough to land in
  case "$broker:$sc" in kafka:reset|kafka:blackhole|kafka:unreachable|kafka:latency) count=$((n * 4)) ;; esac
  : > "$ledger"
  px pass
  consumer_start "$topic"
  [ "$sc" = trickle ] && px trickle 16 1
  [ "$sc" = latency-start ] && px latency 200
  local up0 down0
  up0=$(px_stat up)
  down0=$(px_stat down)
  local fault_s=0
  [ "$sc" = blackhole ] && fault_s=$blackhole_s
  [ "$sc" = unreachable ] && fault_s=$unreachable_s
  # Mid-stream faults: transactions of 5, as a service storing a few at a
  # time; storing then lasts seconds, and the fault lands while messages are
  # still being stored and sent (Kafka sends 5000 in about a second).
  local batch=500
  case "$sc" in reset|blackhole|unreachable|latency) batch=5 ;; esac
  "$cli" publish --store "$store" --transport "$url" --topic "$topic" --count "$count" --size 32 \
    --batch "$batch" --ledger "$ledger" --stall-seconds $((fault_s + 120)) --set retry.backoff.max=2s \
    --set log.level=warn "${extra[@]}" > "$work/$sc.out" 2> >(stamp > "$work/$sc.err") &
  local pub=$!
  pids+=("$pub")
  local t0="" t1=""
  case "$sc" in
  latency)
    # from mid-stream on (latency-start puts it before the first connect)
    wait_midstream "$ledger" "$pub" $((up0 + 2000)) "$down0"
    held_fault "$pub" "$work/$sc.out" latency 200
    ;;
  reset)
    wait_midstream "$ledger" "$pub" $((up0 + 20000)) "$down0"
    held_fault "$pub" "$work/$sc.out" reset
    ;;
  blackhole)
    wait_midstream "$ledger" "$pub" $((up0 + 20000)) "$down0"
    held_fault "$pub" "$work/$sc.out" blackhole
    t0=$EPOCHREALTIME
    sleep "$blackhole_s" # the length of the blackhole is the fault being injected
    px pass
    t1=$EPOCHREALTIME
    ;;
  unreachable)
    wait_midstream "$ledger" "$pub" $((up0 + 20000)) "$down0"
    held_fault "$pub" "$work/$sc.out" refuse
    sleep "$unreachable_s" # the length of the outage is the fault being injected
    px pass
    ;;
  esac
  local rc=0
  wait "$pub" || rc=$?
  px pass
  local summary
  summary=$(cat "$work/$sc.out")
  # the result first, then the verdict
  local want="$work/$sc.want" got="$work/$sc.got"
  awk '{for (s = $1; s <= $2; s++) print s}' "$ledger" | sort -u > "$want"
  consumer_collect "$topic" "$want" > "$got"
  local st accepted received distinct lost dups failed pending detect=""
  # status exits 1 when messages are FAILED: the checks below name them
  st=$("$cli" status --store "$store" --json) || true
  failed=$(jq -r .failed <<<"$st")
  pending=$(jq -r '.sending + .retrying' <<<"$st")
  accepted=$(wc -l < "$want")
  received=$(wc -l < "$got")
  distinct=$(sort -u "$got" | wc -l)
  lost=$(comm -23 "$want" <(sort -u "$got") | wc -l)
  dups=$((received - distinct))
  if [ -n "$t0" ]; then
    local first
    first=$(awk -v t0="$t0" -v re="$marker" '$1 >= t0 && $0 ~ re {print $1; exit}' "$work/$sc.err")
    if [ -n "$first" ]; then
      detect=$(awk -v a="$t0" -v b="$first" 'BEGIN {printf "%.1f", b - a}')
    else
      detect="none_within_$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", b - a}')s"
    fi
  fi
  local key_val="" k
  for k in "${extra[@]}"; do case "$k" in "$detect_key="*) key_val=${k#*=} ;; esac; done
  local line="broker=$broker scenario=$sc n=$count accepted=$accepted received=$received lost=$lost duplicates=$dups failed=$failed pending=$pending seconds=$((SECONDS - started))${store_base:+ store=redis}${t0:+ noticed_s=$detect $detect_key=${key_val:-default}}"
  log "$line"
  [ -n "${NETFAULT_RESULTS:-}" ] && echo "$line" >> "$NETFAULT_RESULTS"
  results+=("$line")
  [ "$lost" -eq 0 ] || fail "$sc: lost $lost accepted message(s)"
  [ "$failed" = 0 ] || fail "$sc: $failed message(s) FAILED: $("$cli" list --store "$store" --state failed --limit 3)"
  [ "$pending" = 0 ] || fail "$sc: rows left pending: $st"
  [ "$rc" -eq 0 ] || fail "$sc: publish exited $rc: $(tail -5 "$work/$sc.err")"
  grep -q "acked=$count failed=0" <<<"$summary" || fail "$sc: publish summary: $summary"
}

for sc in "${scenarios[@]}"; do
  case "$sc" in
  reset|blackhole|latency|latency-start|trickle|unreachable) run "$sc" ;;
  *) fail "unknown scenario $sc" ;;
  esac
done
log "all ${#scenarios[@]} scenario(s): 0 lost, 0 FAILED"
