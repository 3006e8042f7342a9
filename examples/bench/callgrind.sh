#!/usr/bin/env bash
# Instructions per message (valgrind's callgrind), raw, reliable and
# hand-written, against one broker: a figure that does not move with the
# machine's load, so a heavier hot path shows up (docs/performance.md).
#
#   callgrind.sh BENCH URL [COUNT] [HANDWRITTEN_COUNT] [BENCH_ARG...]
#     e.g. callgrind.sh build/examples/bench/ackbox-bench kafka://mock 20000 2000
#
# For each mode it runs `BENCH --MODE-only --rounds 1` under callgrind twice,
# with COUNT (default 20000; hand-written: HANDWRITTEN_COUNT, default 2000)
# messages and with a tenth of them, at the transport's default window, and
# prints one line per mode:
#   scheme mode count Ir Ir/msg marginal_Ir/msg
# Ir is every instruction of the bench process, all its threads (callgrind
# counts them all: librdkafka's, and with kafka://mock the mock brokers'
# too), from exec to exit. Ir/msg = Ir / count; marginal = (Ir(count) -
# Ir(count/10)) / (count - count/10), which leaves out start-up, connecting
# and the store's creation. The kernel's work (fsync, sockets) is not counted.
# Under valgrind the process runs some 50 times slower, its threads one at a
# time, so no confirm may time out: retry.timeout=600s (and for Kafka
# message.timeout.ms 598 s, raw too), or resends would be counted.
#
# The callgrind files stay in $CALLGRIND_DIR (default ./callgrind-out):
#   callgrind_annotate --inclusive=yes FILE | head -60   where the time goes
#   bash callgrind.sh --objects BIG.out SMALL.out N_BIG N_SMALL
#       a message's marginal Ir per shared object (self cost; libc's malloc
#       and free apart)
set -euo pipefail

# Exclusive Ir of one callgrind file summed per shared object ("object Ir"
# lines); libc's allocator (malloc, free and their helpers) apart as "malloc".
# Self costs only: a cost line right after calls= is the callee's, not ours.
objects() {
  awk '
    function name(line, tab,   id, rest) {
      id = line; sub(/\).*/, "", id); sub(/^\(/, "", id)
      rest = line; sub(/^\([0-9]+\) ?/, "", rest)
      if (rest != "") tab[id] = rest
      return tab[id]
    }
    /^ob=/  { ob = name(substr($0, 4), obs); next }
    /^cob=/ { name(substr($0, 5), obs); next }
    /^fn=/  { fn = name(substr($0, 4), fns); next }
    /^cfn=/ { name(substr($0, 5), fns); next }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ {
      if (skip) { skip = 0; next }
      o = ob; sub(/.*\//, "", o)
      if (o ~ /^libc\.so/ && fn ~ /^(_int_|__libc_)?(malloc|free|calloc|realloc|memalign)|^(cfree|malloc_consolidate|unlink_chunk|sysmalloc|tcache|arena_get|alloc_perturb|_mid_memalign)/)
        o = "malloc"
      sum[o] += $2
    }
    END { for (o in sum) print o, sum[o] }' "$1"
}

# --objects BIG SMALL N_BIG N_SMALL: where the instructions of a message go,
# per object: (Ir in BIG - Ir in SMALL) / (N_BIG - N_SMALL), largest first
if [ "${1:-}" = --objects ]; then
  big=${2:?usage: callgrind.sh --objects BIG.out SMALL.out N_BIG N_SMALL}
  small=${3:?} nb=${4:?} ns=${5:?}
  join -a1 -a2 -e0 -o0,1.2,2.2 <(objects "$big" | sort) <(objects "$small" | sort) |
    awk -v d=$((nb - ns)) '{ v = ($2 - $3) / d; t += v; r[$1] = v }
      END { for (o in r) if (r[o] >= 0.5 || r[o] <= -0.5) printf "%10.0f %5.1f%%  %s\n", r[o], 100 * r[o] / t, o
            printf "%10.0f %5.1f%%  total\n", t, 100 }' | sort -rn
  exit 0
fi

bench=${1:?usage: callgrind.sh BENCH URL [COUNT] [HANDWRITTEN_COUNT]}
url=${2:?usage: callgrind.sh BENCH URL [COUNT] [HANDWRITTEN_COUNT]}
count=${3:-20000}
hcount=${4:-2000}
shift $(($# < 4 ? $# : 4))
extra=(--set retry.timeout=600s "$@")
[[ $url == kafka:* ]] && extra+=(--set kafka.message.timeout.ms=598000)
dir=${CALLGRIND_DIR:-callgrind-out}
scheme=${url%%:*}
mkdir -p "$dir"

# total Ir of one callgrind output file
total_ir() { sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$1" | head -1; }

# run MODE N: the bench under callgrind; its Ir on stdout
run() {
  local mode=$1 n=$2 out="$dir/$scheme-$1-$2.out"
  if ! valgrind --tool=callgrind --callgrind-out-file="$out" -q \
      "$bench" --transport "$url" --count "$n" --handwritten-count "$n" --rounds 1 \
      --"$mode"-only --max-seconds 1800 "${extra[@]}" > "$dir/$scheme-$mode-$n.log" 2>&1; then
    echo "callgrind.sh: $mode, $n messages failed (see $dir/$scheme-$mode-$n.log)" >&2
    return 1
  fi
  total_ir "$out"
}

echo "# scheme mode count Ir Ir/msg marginal_Ir/msg   (ackbox-bench under callgrind, all threads)"
for mode in raw reliable handwritten; do
  n=$count
  [ "$mode" = handwritten ] && n=$hcount
  small=$((n / 10))
  [ "$small" -ge 1 ] || small=1
  big_ir=$(run "$mode" "$n")
  small_ir=$(run "$mode" "$small")
  awk -v s="$scheme" -v m="$mode" -v n="$n" -v k="$small" -v b="$big_ir" -v a="$small_ir" \
    'BEGIN { printf "%s %s %d %.0f %.0f %.0f\n", s, m, n, b, b / n, (b - a) / (n - k) }'
done
