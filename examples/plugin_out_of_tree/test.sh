#!/usr/bin/env bash
# What a plugin author does, end to end (ctest plugin_out_of_tree):
#   test.sh BUILD_DIR WORK_DIR
# installs the ackbox of BUILD_DIR into WORK_DIR/prefix; builds this
# folder's transport against that install twice, with find_package(ackbox)
# and with pkg-config ackbox; has the installed `ackbox` CLI load each build
# (--set plugin.load=...) and publish through it: every message acked, each
# in its topic's file once, nothing left in the store, the refusals right;
# and runs the transport conformance suite (the installed
# libackbox-conformance) through conformance_adapter.c, which loads the
# find_package build. CMAKE: the cmake to use.
set -euo pipefail
build=$(cd "${1:?usage: test.sh BUILD_DIR WORK_DIR}" && pwd)
work=${2:?usage: test.sh BUILD_DIR WORK_DIR}
cmake=${CMAKE:-cmake}
src=$(cd "$(dirname "$0")" && pwd)
fail() { echo "plugin_out_of_tree: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
prefix=$work/prefix

"$cmake" --install "$build" --prefix "$prefix" > "$work/install.log" ||
  fail "cmake --install: $(tail -5 "$work/install.log")"
pc=$(find "$prefix" -name ackbox.pc)
lib=$(dirname "$(find "$prefix" -name 'libackbox.so*' | head -1)")
[ -n "$pc" ] && [ -x "$prefix/bin/ackbox" ] || fail "the install lacks ackbox.pc or bin/ackbox"

# 1. find_package(ackbox)
"$cmake" -S "$src" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_FLAGS=-Werror \
  > "$work/cmake.log" 2>&1 || fail "configure with find_package: $(tail -20 "$work/cmake.log")"
"$cmake" --build "$work/cmake" >> "$work/cmake.log" 2>&1 ||
  fail "build with find_package: $(tail -20 "$work/cmake.log")"

# 2. pkg-config ackbox: the .pc must point into the prefix it was installed to
export PKG_CONFIG_PATH
PKG_CONFIG_PATH=$(dirname "$pc")
cflags=$(pkg-config --cflags ackbox)
cflags=${cflags%% *} # one -I, no trailing blank
[ "$(cd "${cflags#-I}" && pwd)" = "$prefix/include" ] ||
  fail "pkg-config --cflags ackbox gives '$cflags', not $prefix/include"
mkdir -p "$work/pc"
make -s -f "$src/Makefile" OUT="$work/pc" CFLAGS="-O2 -Werror" > "$work/make.log" 2>&1 ||
  fail "build with pkg-config: $(tail -20 "$work/make.log")"

# 3. the installed CLI loads each build and publishes through it. The broker
# is a directory; a topic is a file in it that must exist (declared).
n=300
ackbox_cli() { LD_LIBRARY_PATH=$lib "$prefix/bin/ackbox" "$@"; }
for how in cmake pc; do
  so=$work/$how/libackbox-linefile.so
  [ -f "$so" ] || fail "$how built no $so"
  broker=$work/broker-$how
  mkdir -p "$broker"
  : > "$broker/orders"
  store=sqlite://$work/outbox-$how.db
  lf=(--set plugin.load="$so" --set transport.url="linefile://$broker")
  out=$(ackbox_cli publish --store "$store" "${lf[@]}" \
          --set transport.require_connect=true --set linefile.window=64 \
          --topic orders --count $n 2>&1) || fail "$how: publish: $out"
  grep -q "acked=$n failed=0" <<<"$out" || fail "$how: publish said: $out"
  log=$broker/orders
  [ "$(wc -l < "$log")" -eq $n ] || fail "$how: $(wc -l < "$log") lines in $log, not $n"
  [ "$(awk '{print $1}' "$log" | sort -u | wc -l)" -eq $n ] || fail "$how: duplicate ids in $log"
  [ "$(awk '$2 != "orders"' "$log" | wc -l)" -eq 0 ] || fail "$how: a line without topic orders"
  pending=$(ackbox_cli status --store "$store" --json | jq .pending)
  [ "$pending" -eq 0 ] || fail "$how: $pending messages left pending"
  # its validate op runs before anything is stored: a topic is a file name
  for topic in "two words" "a/b" ".."; do
    out=$(ackbox_cli publish --store "$store" "${lf[@]}" --topic "$topic" --count 1 2>&1) &&
      fail "$how: topic '$topic' was published"
    grep -q "not a file name" <<<"$out" ||
      fail "$how: the refusal of '$topic' does not say why: $out"
  done
  # a topic without its file: the broker refuses it (UNROUTABLE, ENOENT), each attempt
  out=$(ackbox_cli publish --store "$store" "${lf[@]}" --set retry.max_attempts=1 \
          --topic undeclared --count 1 2>&1) || true
  grep -q "acked=0 failed=1" <<<"$out" || fail "$how: an undeclared topic: $out"
  [ ! -e "$broker/undeclared" ] || fail "$how: the transport created $broker/undeclared"
  echo "plugin_out_of_tree: $how: $n messages through $so"
done

# 4. a plugin that is not there: a usage error naming the file
rc=0
out=$(ackbox_cli publish --store "sqlite://$work/x.db" \
        --set plugin.load="$work/nope.so" --set transport.url="linefile://$work" \
        --topic t --count 1 2>&1) || rc=$?
[ "$rc" -eq 2 ] && grep -q "$work/nope.so" <<<"$out" || fail "missing plugin: exit $rc: $out"

# 5. the transport conformance suite, built against the install (step 1),
# loading the plugin at run time; its tests make their directories here
tc=$work/conformance
[ -x "$work/cmake/linefile-conformance" ] || fail "step 1 built no linefile-conformance"
mkdir -p "$tc/tmp"
rc=0
ACKBOX_TEST_TMP=$tc/tmp "$work/cmake/linefile-conformance" > "$tc/log" 2>&1 || rc=$?
grep '^\[\(PASS\|FAIL\|====\)\]' "$tc/log" || true
[ "$rc" -eq 0 ] ||
  fail "conformance suite: exit $rc: $(grep -A3 -- '\[----\]' "$tc/log" | head -30)"
grep -q "Tested: [1-9][0-9]* | Passing: [1-9][0-9]* | Failing: 0" "$tc/log" ||
  fail "conformance suite: no passing synthesis in $tc/log"
echo "plugin_out_of_tree: ok"
