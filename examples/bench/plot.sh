#!/usr/bin/env bash
# Plots of ackbox-bench into docs/bench/ (gnuplot-nox), titled with the machine.
#
#   plot.sh BENCH URL [COUNT] [WINDOWS...]
#     throughput against window size, raw vs reliable: docs/bench/<scheme>-window.dat, .png
#     (no hand-written rounds in either plot: they have window 1 and no offered rate)
#     e.g. plot.sh build/examples/bench/ackbox-bench amqp://127.0.0.1:5672 20000 1 8 64 256 1024
#   plot.sh --latency BENCH URL RATE [COUNT] [WINDOW]
#     latency distribution at an offered RATE msg/s (open loop), 3 rounds per mode merged:
#     publish->ack raw and reliable, publish->durable: docs/bench/<scheme>-latency.dat, .png
#     e.g. plot.sh --latency build/examples/bench/ackbox-bench amqp://127.0.0.1:5672 5000 50000
#   plot.sh --all BUILD_DIR
#     every plot of docs/bench/ from one command: starts RabbitMQ and mosquitto of its own
#     (the test fixtures' scripts, temporary directories, free ports), draws the window and
#     latency plots of AMQP, MQTT and Kafka (mock cluster) with the figures of
#     docs/performance.md, then docs/bench/metrics-outage.png; stops the brokers. About
#     15 minutes on 2 cores; run it on a quiet machine.
#   plot.sh --replot
#     redraws the window and latency PNGs from the .dat files already in docs/bench/ (no bench)
# The legend sits below each plot, one entry per line, clear of the lines.
set -euo pipefail
if [ "${1:-}" = --replot ]; then
  here=$(cd "$(dirname "$0")" && pwd)
  cd "$here/../.."
  for dat in docs/bench/*-window.dat; do
    [ -e "$dat" ] || continue
    scheme=$(basename "$dat" -window.dat)
    count=$(sed -n '1s/.*(\([0-9]*\) msgs.*/\1/p' "$dat")
    PLOT_REPLOT=1 bash "$here/plot.sh" /dev/null "$scheme://replot" "$count"
  done
  for dat in docs/bench/*-latency.dat; do
    [ -e "$dat" ] || continue
    scheme=$(basename "$dat" -latency.dat)
    count=$(sed -n '1s/.*, \([0-9]*\) msgs x.*/\1/p' "$dat")
    rate=$(sed -n '1s/.*rate \([0-9]*\) msg\/s.*/\1/p' "$dat")
    PLOT_REPLOT=1 bash "$here/plot.sh" --latency /dev/null "$scheme://replot" "$rate" "$count"
  done
  exit 0
fi
replot=${PLOT_REPLOT:-}
if [ "${1:-}" = --all ]; then
  build=${2:?usage: plot.sh --all BUILD_DIR}
  build=$(cd "$build" && pwd)
  here=$(cd "$(dirname "$0")" && pwd)
  root=$(cd "$here/../.." && pwd)
  b=$build/examples/bench/ackbox-bench
  work=$(mktemp -d /tmp/ackbox-plots-XXXXXX)
  chmod 755 "$work"
  cleanup() {
    bash "$root/brokers/amqp/tests/rabbitmq.sh" stop "$work/rmq" >/dev/null 2>&1 || true
    bash "$root/brokers/mqtt/tests/mosquitto.sh" stop "$work/mq" >/dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  bash "$root/brokers/amqp/tests/rabbitmq.sh" start "$work/rmq" >&2
  bash "$root/brokers/mqtt/tests/mosquitto.sh" start "$work/mq" >&2
  amqp=$(. "$work/rmq/env"; echo "$AMQP_URL")
  mqtt=$(. "$work/mq/env"; echo "$MQTT_URL")
  bash "$here/plot.sh" "$b" "$amqp" 10000 1 8 64 256 1024
  bash "$here/plot.sh" "$b" "$mqtt" 10000 1 10 100 1000
  bash "$here/plot.sh" "$b" kafka://mock 50000 10 100 1000 10000
  for u in "$amqp" "$mqtt" kafka://mock; do
    bash "$here/plot.sh" --latency "$b" "$u" 5000 50000
  done
  bash "$root/docs/bench/metrics-outage.sh" "$build"
  exit 0
fi
latency=false
if [ "${1:-}" = --latency ]; then
  latency=true
  shift
fi
bench=${1:?path of ackbox-bench} url=${2:?transport URL}
[ -n "$replot" ] || bench=$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")
cd "$(dirname "$0")/../.."
scheme=${url%%:*}
mkdir -p docs/bench
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"

if $latency; then
  rate=${3:?offered rate in msg/s}
  count=${4:-50000}
  window=${5:-}
  out=docs/bench/$scheme-latency
  if [ -z "$replot" ]; then
    "$bench" --transport "$url" --count "$count" --rounds 3 --rate "$rate" --no-handwritten \
      ${window:+--window "$window"} --latency-file "$out.dat" >&2
    cat "$out.dat"
  fi
  gnuplot <<GP
set terminal pngcairo size 800,540 noenhanced
set output "$out.png"
set title "$scheme: latency at $rate msg/s offered ($count msgs x 256 B x 3 rounds; $machine)"
set xlabel "percentile"
set ylabel "milliseconds"
set logscale x
set logscale y
set xtics ("0%%" 1, "50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000)
set datafile missing "-"
set key below vertical maxrows 3
set grid
plot "$out.dat" using (100/(100-\$1)):(\$1 < 100 ? \$2 : NaN) with linespoints title "raw client: publish -> confirm", \
     "$out.dat" using (100/(100-\$1)):(\$1 < 100 ? \$3 : NaN) with linespoints title "ackbox: publish -> ack", \
     "$out.dat" using (100/(100-\$1)):(\$1 < 100 ? \$4 : NaN) with linespoints title "ackbox: publish -> durable in the store"
GP
  echo "wrote $out.png"
  exit 0
fi

count=${3:-20000}
shift 3 2>/dev/null || shift $#
windows=("$@")
[ ${#windows[@]} -gt 0 ] || windows=(1 8 64 256 1024)
out=docs/bench/$scheme-window
if [ -z "$replot" ]; then
  {
    echo "# window raw_msgs_per_s reliable_msgs_per_s ratio   ($count msgs x 256 B, median of 3 rounds, $machine)"
    for w in "${windows[@]}"; do
      "$bench" --transport "$url" --count "$count" --rounds 3 --window "$w" --no-handwritten \
        --json 2>/dev/null |
        jq -r --arg w "$w" '"\($w) \(.median.raw_msgs_per_s|floor) \(.median.reliable_msgs_per_s|floor) \(.median.ratio)"'
    done
  } > "$out.dat"
  cat "$out.dat"
fi
gnuplot <<GP
set terminal pngcairo size 800,540 noenhanced
set output "$out.png"
set title "$scheme: throughput against in-flight window (256-byte messages; $machine)"
set xlabel "window (unconfirmed messages)"
set ylabel "messages per second"
set logscale x 2
set key below vertical maxrows 3
set grid
plot "$out.dat" using 1:2 with linespoints title "raw client with confirms", \
     "$out.dat" using 1:3 with linespoints title "ackbox (store, confirm, delete)"
GP
echo "wrote $out.png"
