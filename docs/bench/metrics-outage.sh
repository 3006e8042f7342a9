#!/usr/bin/env bash
# metrics-outage.sh - redraws docs/bench/metrics-outage.png from real scrapes:
# a relay with --metrics-listen delivers to a RabbitMQ of its own while a
# publisher stores 20 messages every half second; the broker is stopped at
# 15 s (SIGKILL) and started again at 35 s; /metrics is scraped every second for 60 s.
# Not run by CI (it takes about two minutes); run it after changing metrics.
# usage: docs/bench/metrics-outage.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: metrics-outage.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cli="$build/tools/ackbox/ackbox"
fixture="$root/brokers/amqp/tests/rabbitmq.sh"
# shellcheck source=tests/fixtures/lib.sh
. "$root/tests/fixtures/lib.sh"
work=$(mktemp -d /tmp/metrics-outage-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            bash "$fixture" stop "$work/rmq" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

bash "$fixture" start "$work/rmq" >/dev/null
# shellcheck disable=SC1091
. "$work/rmq/env"
store="sqlite://$work/outbox.db"
port=$(free_port)
"$cli" publish --store "$store" --transport amqp://127.0.0.1:1 --topic orders --count 1 \
  --set transport.require_connect=false --stall-seconds 0.2 >/dev/null 2>&1 || true
"$cli" relay --store "$store" --transport "$AMQP_URL" --set amqp.declare_queue=true \
  --set retry.backoff.max=2s --metrics-listen "127.0.0.1:$port" >/dev/null 2>&1 &
pids+=($!)
( while :; do
    "$cli" publish --store "$store" --transport amqp://127.0.0.1:1 --topic orders --count 20 \
      --set transport.require_connect=false --stall-seconds 0.2 >/dev/null 2>&1 || true
    sleep 0.5
  done ) &
pids+=($!)

data="$work/scrapes.dat"
echo "# t pending oldest_age_s connected acked" > "$data"
t0=$SECONDS
for t in $(seq 0 59); do
  while [ $((SECONDS - t0)) -lt "$t" ]; do sleep 0.05; done
  [ "$t" = 15 ] && bash "$fixture" kill "$work/rmq" >/dev/null 2>&1
  [ "$t" = 35 ] && bash "$fixture" restart "$work/rmq" >/dev/null 2>&1 &
  m=$(curl -sf "http://127.0.0.1:$port/metrics" || true)
  pend=$(sed -n 's/^ackbox_pending_messages{state="\(sending\|retrying\)"} \([0-9]*\)$/\2/p' <<<"$m" | paste -sd+ | bc)
  age=$(sed -n 's/^ackbox_oldest_pending_age_seconds \(.*\)$/\1/p' <<<"$m")
  conn=$(sed -n 's/^ackbox_transport_connected{[^}]*} \([0-9]*\)$/\1/p' <<<"$m")
  acked=$(sed -n 's/^ackbox_acked_messages_total{[^}]*} \([0-9]*\)$/\1/p' <<<"$m")
  echo "$t ${pend:-0} ${age:-0} ${conn:-0} ${acked:-0}" >> "$data"
done
cp "$data" "$here/metrics-outage.dat"
gnuplot <<GP
set terminal pngcairo size 900,420 noenhanced
set output "$here/metrics-outage.png"
set title "ackbox relay /metrics during a RabbitMQ outage (killed at 15 s, restarted at 35 s; 2-core Debian 12)"
set xlabel "seconds"
set ylabel "messages"
set y2label "seconds"
set y2tics
set key outside bottom center horizontal
set style rect fc rgb "#eeeeee" fs solid noborder
set object 1 rect from 15, graph 0 to 35, graph 1 behind
plot "$here/metrics-outage.dat" using 1:2 with lines lw 2 title "ackbox_pending_messages (sending+retrying)", \
     "" using 1:3 axes x1y2 with lines lw 2 title "ackbox_oldest_pending_age_seconds (right)", \
     "" using 1:(\$4*50) with steps title "ackbox_transport_connected (x50)"
GP
echo "wrote $here/metrics-outage.png and metrics-outage.dat"
