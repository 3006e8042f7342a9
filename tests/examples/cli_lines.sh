#!/usr/bin/env bash
# cli_lines.sh - `ackbox publish --lines` and --payload-file against the
# RabbitMQ fixture: every line arrives as one message with exactly its bytes
# (an empty line, UTF-8, a last line without a newline); lines written one at
# a time through a pipe are published one at a time, before the input ends;
# 128 MiB of lines go through in bounded memory (peak RSS measured); and
# 64 MiB on stdin for --payload-file is refused at message.max_bytes without
# being read into memory. Peak RSS is what getrusage() reports for the child.
# usage: cli_lines.sh PATH/TO/ackbox PATH/TO/brokers/amqp/tests/rabbitmq.sh FIXTURE_NAME
set -euo pipefail
usage="usage: cli_lines.sh ACKBOX_BINARY RABBITMQ_FIXTURE_SCRIPT FIXTURE_NAME"
cli=${1:?$usage}
fixture=${2:?$usage}
fixture_name=${3:?$usage}

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
[ -n "${ACKBOX_FIXTURE_DIR:-}" ] || fail "ACKBOX_FIXTURE_DIR is not set: run this test through ctest"
fixture_dir=$ACKBOX_FIXTURE_DIR/$fixture_name
[ -f "$fixture_dir/env" ] || fail "broker fixture '$fixture_name' did not start: $fixture_dir/env missing"
AMQP_URL=$(sed -n 's/^AMQP_URL=//p' "$fixture_dir/env")
for tool in amqp-declare-queue amqp-consume amqp-delete-queue python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done

base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
tmp=$(mktemp -d "$base/cli-lines-XXXXXX")
pub_pid=""
cleanup() {
  [ -z "$pub_pid" ] || kill -9 "$pub_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
tag="lines$$x$RANDOM"
store="sqlite://$tmp/outbox.db"
queue_depth() {
  bash "$fixture" queues "$fixture_dir" | awk -v q="$1" '$1 == q { print $2 }'
}
# measured ARGS...: runs the CLI (stdin inherited), stdout/stderr in $tmp/out,
# $tmp/err; sets rc and rss_kb (the child's peak resident set, KiB)
measured() {
  local r
  r=$(python3 -c '
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    rc = subprocess.call(sys.argv[3:], stdout=out, stderr=err)
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
' "$tmp/out" "$tmp/err" "$cli" "$@")
  rc=${r% *}
  rss_kb=${r#* }
}

step "each line is one message with exactly its bytes"
q="$tag.exact"
amqp-declare-queue --url="$AMQP_URL" --queue="$q" --durable >/dev/null
printf 'first line\n\n{"order":42,"name":"Zoë"}\n  spaces and\ttab  \nlast, no newline' >"$tmp/in"
"$cli" publish --store "$store" --transport "$AMQP_URL" --topic "$q" --lines <"$tmp/in" \
  >"$tmp/out" 2>"$tmp/err" || fail "publish --lines exited $?: $(cat "$tmp/err")"
grep -Eq '^published=5 acked=5 failed=0 ' "$tmp/out" || fail "summary: $(cat "$tmp/out")"
[ ! -s "$tmp/err" ] || fail "stderr: $(cat "$tmp/err")"
# each message written out as-is, then a separator no line contains
timeout 60 amqp-consume --url="$AMQP_URL" -q "$q" -c 5 -- \
  sh -c 'cat; printf "\n<eom>\n"' >"$tmp/got"
python3 - "$tmp/in" "$tmp/got" <<'PY' || fail "the messages are not the lines: $(cat "$tmp/got")"
import sys
want = open(sys.argv[1], "rb").read().split(b"\n")
got = open(sys.argv[2], "rb").read().split(b"\n<eom>\n")[:-1]
sys.exit(0 if got == want else 1)
PY

step "lines written one at a time are published one at a time"
q="$tag.pipe"
amqp-declare-queue --url="$AMQP_URL" --queue="$q" --durable >/dev/null
mkfifo "$tmp/fifo"
"$cli" publish --store "$store" --transport "$AMQP_URL" --topic "$q" --lines \
  --payload-file "$tmp/fifo" >"$tmp/out" 2>"$tmp/err" &
pub_pid=$!
exec 3>"$tmp/fifo"
for k in 1 2 3; do
  echo "line $k" >&3
  deadline=$((SECONDS + 30))
  until [ "$(queue_depth "$q")" = "$k" ]; do
    [ $SECONDS -lt $deadline ] || fail "line $k was not published while the input stayed open"
    sleep 0.1
  done
done
exec 3>&-
rc=0
wait "$pub_pid" || rc=$?
pub_pid=""
[ "$rc" = 0 ] || fail "publish from a pipe exited $rc: $(cat "$tmp/err")"
grep -Eq '^published=3 acked=3 failed=0 ' "$tmp/out" || fail "summary: $(cat "$tmp/out")"

step "128 MiB of lines in bounded memory"
q="$tag.big"
amqp-declare-queue --url="$AMQP_URL" --queue="$q" --durable >/dev/null
lines=16384 # of 8 KiB each
# (a process substitution: measured sets variables in this shell)
measured publish --store "$store" --transport "$AMQP_URL" --topic "$q" --lines < <(python3 -c '
import sys
pad = b"x" * 8184
for i in range(1, int(sys.argv[1]) + 1):
    sys.stdout.buffer.write(b"%07d %s\n" % (i, pad))
' "$lines")
[ "$rc" = 0 ] || fail "publish of 128 MiB of lines exited $rc: $(cat "$tmp/err")"
grep -Eq "^published=$lines acked=$lines failed=0 " "$tmp/out" || fail "summary: $(cat "$tmp/out")"
echo "    $(cat "$tmp/out"); peak RSS $((rss_kb / 1024)) MiB"
[ "$(queue_depth "$q")" = "$lines" ] || fail "queue $q holds $(queue_depth "$q"), expected $lines"
# reading it whole would take 128 MiB; the store's batches, the relay's
# buffer (queue.buffering.max_bytes, 16 MiB) and the broker client stay well under
[ "$rss_kb" -lt $((80 * 1024)) ] || fail "peak RSS $rss_kb KiB for 128 MiB of input: not streamed"
amqp-delete-queue --url="$AMQP_URL" --queue="$q" >/dev/null

step "--payload-file - refuses 64 MiB at message.max_bytes without reading it"
measured publish --store "sqlite://$tmp/never.db" --transport "$AMQP_URL" --topic "$tag.none" \
  --payload-file - < <(head -c $((64 << 20)) /dev/zero)
[ "$rc" = 2 ] || fail "publish of 64 MiB exited $rc: $(cat "$tmp/err")"
grep -q "more than 1048576 bytes" "$tmp/err" || fail "stderr: $(cat "$tmp/err")"
echo "    refused; peak RSS $((rss_kb / 1024)) MiB"
[ "$rss_kb" -lt $((32 * 1024)) ] || fail "peak RSS $rss_kb KiB: the payload was read into memory"
[ ! -e "$tmp/never.db" ] || fail "a refused payload created the store"

echo "PASS"
