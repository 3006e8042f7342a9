#!/usr/bin/env bash
# Throughput against window size, raw vs reliable, for one broker; writes
# docs/bench/<scheme>-window.dat and .png (gnuplot-nox) and prints the table.
#   plot.sh BENCH URL [COUNT] [WINDOWS...]
#   e.g. plot.sh build/examples/bench/ackbox-bench amqp://127.0.0.1:5672 20000 1 8 64 256 1024
set -euo pipefail
bench=${1:?path of ackbox-bench} url=${2:?transport URL}
count=${3:-20000}
shift 3 2>/dev/null || shift $#
windows=("$@")
[ ${#windows[@]} -gt 0 ] || windows=(1 8 64 256 1024)
cd "$(dirname "$0")/../.."
scheme=${url%%:*}
out=docs/bench/$scheme-window
mkdir -p docs/bench
{
  echo "# window raw_msgs_per_s reliable_msgs_per_s ratio   ($count msgs x 256 B, median of 3 rounds, $(nproc) cores)"
  for w in "${windows[@]}"; do
    "$bench" --transport "$url" --count "$count" --rounds 3 --window "$w" --json 2>/dev/null |
      jq -r --arg w "$w" '"\($w) \(.median.raw_msgs_per_s|floor) \(.median.reliable_msgs_per_s|floor) \(.median.ratio)"'
  done
} > "$out.dat"
cat "$out.dat"
gnuplot <<GP
set terminal pngcairo size 800,480 noenhanced
set output "$out.png"
set title "$scheme: throughput against in-flight window (256-byte messages, $(nproc) cores)"
set xlabel "window (unconfirmed messages)"
set ylabel "messages per second"
set logscale x 2
set key top left
set grid
plot "$out.dat" using 1:2 with linespoints title "raw client with confirms", \
     "$out.dat" using 1:3 with linespoints title "ackbox (store, confirm, delete)"
GP
echo "wrote $out.png"
