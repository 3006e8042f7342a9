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
set -euo pipefail
latency=false
if [ "${1:-}" = --latency ]; then
  latency=true
  shift
fi
bench=${1:?path of ackbox-bench} url=${2:?transport URL}
bench=$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")
cd "$(dirname "$0")/../.."
scheme=${url%%:*}
mkdir -p docs/bench
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"

if $latency; then
  rate=${3:?offered rate in msg/s}
  count=${4:-50000}
  window=${5:-}
  out=docs/bench/$scheme-latency
  "$bench" --transport "$url" --count "$count" --rounds 3 --rate "$rate" --no-handwritten \
    ${window:+--window "$window"} --latency-file "$out.dat" >&2
  cat "$out.dat"
  gnuplot <<GP
set terminal pngcairo size 800,480 noenhanced
set output "$out.png"
set title "$scheme: latency at $rate msg/s offered ($count msgs x 256 B x 3 rounds; $machine)"
set xlabel "percentile"
set ylabel "milliseconds"
set logscale x
set logscale y
set xtics ("0%%" 1, "50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000)
set datafile missing "-"
set key top left
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
{
  echo "# window raw_msgs_per_s reliable_msgs_per_s ratio   ($count msgs x 256 B, median of 3 rounds, $machine)"
  for w in "${windows[@]}"; do
    "$bench" --transport "$url" --count "$count" --rounds 3 --window "$w" --no-handwritten \
      --json 2>/dev/null |
      jq -r --arg w "$w" '"\($w) \(.median.raw_msgs_per_s|floor) \(.median.reliable_msgs_per_s|floor) \(.median.ratio)"'
  done
} > "$out.dat"
cat "$out.dat"
gnuplot <<GP
set terminal pngcairo size 800,480 noenhanced
set output "$out.png"
set title "$scheme: throughput against in-flight window (256-byte messages; $machine)"
set xlabel "window (unconfirmed messages)"
set ylabel "messages per second"
set logscale x 2
set key top left
set grid
plot "$out.dat" using 1:2 with linespoints title "raw client with confirms", \
     "$out.dat" using 1:3 with linespoints title "ackbox (store, confirm, delete)"
GP
echo "wrote $out.png"
