#!/usr/bin/env bash
# cli_concurrent.sh - concurrent `ackbox publish` runs on one SQLite store,
# against the RabbitMQ fixture, without any fault: with 2 and with 4
# processes, each to a queue of its own. Each run must count exactly its own
# messages (published = acked = N, nothing "left by an earlier run") and each
# queue must hold exactly N: no duplicates. Every process starts once the one
# before it has stored its first batch (its ledger says so), so each opens the
# store while the others have messages in flight.
# usage: cli_concurrent.sh PATH/TO/ackbox PATH/TO/brokers/amqp/tests/rabbitmq.sh FIXTURE_NAME
set -euo pipefail
usage="usage: cli_concurrent.sh ACKBOX_BINARY RABBITMQ_FIXTURE_SCRIPT FIXTURE_NAME"
cli=${1:?$usage}
fixture=${2:?$usage}
fixture_name=${3:?$usage}
n=${CLI_CONCURRENT_N:-20000} # messages per process with 2; half as many with 4

fail() { echo "FAIL: $*" >&2; exit 1; }
[ -n "${ACKBOX_FIXTURE_DIR:-}" ] || fail "ACKBOX_FIXTURE_DIR is not set: run this test through ctest"
fixture_dir=$ACKBOX_FIXTURE_DIR/$fixture_name
[ -f "$fixture_dir/env" ] || fail "broker fixture '$fixture_name' did not start: $fixture_dir/env missing"
AMQP_URL=$(sed -n 's/^AMQP_URL=//p' "$fixture_dir/env")
command -v amqp-declare-queue >/dev/null || fail "amqp-tools are not installed (scripts/install-deps.sh)"

base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
tmp=$(mktemp -d "$base/cli-conc-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
queue_depth() {
  bash "$fixture" queues "$fixture_dir" | awk -v q="$1" '$1 == q { print $2 }'
}

# run P N: P publishers of N messages each on one new store
run() {
  local p=$1 each=$2 tag="conc$$x$RANDOM" i rc deadline
  local store="sqlite://$tmp/outbox-$p.db"
  pids=()
  for i in $(seq 1 "$p"); do
    amqp-declare-queue --url="$AMQP_URL" --queue="$tag.$i" --durable >/dev/null
  done
  for i in $(seq 1 "$p"); do
    # retry.timeout 60 s: a confirm that a loaded machine delays past the
    # default 10 s is resent, a legitimate duplicate this test would count
    "$cli" publish --store "$store" --transport "$AMQP_URL" --topic "$tag.$i" --count "$each" \
      --set retry.timeout=60s \
      --ledger "$tmp/ledger-$p-$i" >"$tmp/out-$p-$i" 2>"$tmp/err-$p-$i" </dev/null &
    pids+=("$!")
    deadline=$((SECONDS + 60))
    until [ -s "$tmp/ledger-$p-$i" ]; do
      kill -0 "${pids[$((i - 1))]}" 2>/dev/null || break # finished already (or failed: below)
      [ $SECONDS -lt $deadline ] || fail "publisher $i of $p stored nothing within 60 s"
      sleep 0.01
    done
  done
  for i in $(seq 1 "$p"); do
    rc=0
    wait "${pids[$((i - 1))]}" || rc=$?
    [ "$rc" = 0 ] || fail "publisher $i of $p exited $rc: $(cat "$tmp/err-$p-$i")"
  done
  pids=()
  for i in $(seq 1 "$p"); do
    local out depth
    out=$(cat "$tmp/out-$p-$i")
    depth=$(queue_depth "$tag.$i")
    echo "    $p publishers, #$i: $out; queue holds $depth"
    grep -Eq "^published=$each acked=$each failed=0 " <<<"$out" ||
      fail "publisher $i of $p did not count exactly its own messages: $out"
    [ ! -s "$tmp/err-$p-$i" ] ||
      fail "publisher $i of $p said something (another's messages?): $(cat "$tmp/err-$p-$i")"
    [ "$depth" = "$each" ] ||
      fail "queue $tag.$i holds $depth messages, expected $each: $((depth - each)) duplicates"
  done
}

echo "--- 2 publishers x $n"
run 2 "$n"
echo "--- 4 publishers x $((n / 2))"
run 4 $((n / 2))
echo "PASS"
