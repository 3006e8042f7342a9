#!/usr/bin/env bash
# cli_test.sh - the ackbox CLI end to end against the RabbitMQ fixture:
# publish 2000 -> all acked, the queue holds 2000 and every sequence number;
# an unroutable topic -> exit 1 and FAILED with NO_ROUTE/312, then requeue +
# relay deliver it; stuck SENDING messages -> fail, requeue, purge --id, and
# the relay sends only what is left; bad input -> the documented exit code,
# one stderr line, nothing written (no store file is created by a publish that
# fails before storing). Synchronisation is the CLI's own exit, never a sleep.
# usage: cli_test.sh PATH/TO/ackbox PATH/TO/brokers/amqp/tests/rabbitmq.sh [FIXTURE_NAME]
# FIXTURE_NAME (default rabbitmq) is the ctest fixture whose env file to read.
set -euo pipefail
usage="usage: cli_test.sh ACKBOX_BINARY RABBITMQ_FIXTURE_SCRIPT [FIXTURE_NAME]"
cli=${1:?$usage}
fixture=${2:?$usage}
fixture_name=${3:-rabbitmq}

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }

# A missing fixture or tool is a failed test, never a skipped one.
[ -n "${ACKBOX_FIXTURE_DIR:-}" ] || fail "ACKBOX_FIXTURE_DIR is not set: run this test through ctest"
fixture_dir=$ACKBOX_FIXTURE_DIR/$fixture_name
[ -f "$fixture_dir/env" ] || fail "broker fixture '$fixture_name' did not start: $fixture_dir/env missing"
AMQP_URL=$(sed -n 's/^AMQP_URL=//p' "$fixture_dir/env")
[ -n "$AMQP_URL" ] || fail "fixture '$fixture_name' env has no AMQP_URL"
for tool in jq amqp-declare-queue amqp-consume script; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done

base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
tmp=$(mktemp -d "$base/cli-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tag="cli$$x$RANDOM" # queue names unique per run: the broker may be shared

# expect RC ARGS...: runs the CLI with stdout in $tmp/out and stderr in $tmp/err.
expect() {
  local want=$1 rc=0
  shift
  "$cli" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
  if [ "$rc" != "$want" ]; then
    echo "stdout:" >&2; cat "$tmp/out" >&2
    echo "stderr:" >&2; cat "$tmp/err" >&2
    fail "ackbox $* exited $rc, expected $want"
  fi
}
# One clear line on stderr, nothing on stdout: what every refusal looks like.
one_error_line() {
  [ "$(wc -l <"$tmp/err")" = 1 ] || { cat "$tmp/err" >&2; fail "expected exactly one stderr line"; }
  [ ! -s "$tmp/out" ] || { cat "$tmp/out" >&2; fail "expected nothing on stdout"; }
  if [ -n "${1:-}" ]; then
    grep -q -- "$1" "$tmp/err" || { cat "$tmp/err" >&2; fail "stderr does not mention '$1'"; }
  fi
  return 0
}
queue_depth() {
  bash "$fixture" queues "$fixture_dir" | awk -v q="$1" '$1 == q { print $2 }'
}
summary_field() { # summary_field NAME: the value of NAME=... in the one stdout line
  tr ' ' '\n' <"$tmp/out" | sed -n "s/^$1=//p"
}

store="sqlite://$tmp/outbox.db"
queue="$tag.orders"

step "--version and --help"
expect 0 --version
grep -Eq '^ackbox [0-9]+\.[0-9]+\.[0-9]+$' "$tmp/out" || fail "--version printed '$(cat "$tmp/out")'"
expect 0 --help
grep -q 'Exit codes' "$tmp/out" || fail "--help does not document the exit codes"
expect 0 publish --help
grep -q -- '--payload-file' "$tmp/out" || fail "publish --help does not list --payload-file"

step "publish --count 2000 to a declared queue: all acked, one stdout line"
amqp-declare-queue --url="$AMQP_URL" --queue="$queue" --durable >/dev/null
expect 0 publish --store "$store" --transport "$AMQP_URL" --topic "$queue" --count 2000
[ "$(wc -l <"$tmp/out")" = 1 ] || fail "publish printed $(wc -l <"$tmp/out") stdout lines, expected 1"
grep -Eq '^published=2000 acked=2000 failed=0 elapsed=[0-9]+\.[0-9]{3} rate=[0-9]+$' "$tmp/out" ||
  fail "publish summary: '$(cat "$tmp/out")'"
[ ! -s "$tmp/err" ] || { cat "$tmp/err" >&2; fail "a clean non-tty publish wrote to stderr"; }
echo "    $(cat "$tmp/out")"
depth=$(queue_depth "$queue")
[ "$depth" = 2000 ] || fail "queue $queue holds '$depth' messages, expected 2000"

step "every sequence number 1..2000 arrived once, each payload 256 bytes"
# one line "LENGTH SEQ" per consumed message
# shellcheck disable=SC2016 # expanded by the sh that amqp-consume runs
# (a shell per message: minutes on a loaded machine)
timeout 600 amqp-consume --url="$AMQP_URL" -q "$queue" -c 2000 -p 500 -- \
  sh -c 'b=$(cat); echo "${#b} ${b%% *}"' >"$tmp/consumed" ||
  fail "amqp-consume did not read 2000 messages within 600 s: $(wc -l < "$tmp/consumed") read"
awk '$1 != 256 { bad++ } END { exit bad > 0 }' "$tmp/consumed" ||
  fail "payloads not 256 bytes: $(awk '$1 != 256' "$tmp/consumed" | head -3)"
awk '{ print $2 }' "$tmp/consumed" | sort -n | cmp -s - <(seq 1 2000) ||
  fail "sequence numbers 1..2000 did not arrive exactly once each"

step "status --json: all zeros"
expect 0 status --store "$store" --json
jq -e '.sending == 0 and .retrying == 0 and .failed == 0 and .pending == 0
       and .oldest_pending_ms == null and .oldest_pending_age_ms == null' "$tmp/out" >/dev/null ||
  fail "status --json: $(cat "$tmp/out")"

step "a long non-tty run prints nothing extra; on a terminal it shows live progress"
expect 0 publish --store "$store" --transport "$AMQP_URL" --topic "$queue" --count 10000 --size 16
if [ "$(wc -l <"$tmp/out")" != 1 ] || [ -s "$tmp/err" ]; then
  fail "non-tty publish of 10000 printed extra output: $(cat "$tmp/out" "$tmp/err")"
fi
script -qec "$(printf '%q ' "$cli" publish --store "$store" --transport "$AMQP_URL" \
  --topic "$queue" --count 10000 --size 16)" /dev/null </dev/null >"$tmp/tty" ||
  fail "publish on a terminal failed: $(cat "$tmp/tty")"
grep -q 'in flight' "$tmp/tty" || fail "no progress line on a terminal: $(cat "$tmp/tty")"
grep -q 'published=10000 acked=10000 failed=0' "$tmp/tty" || fail "tty summary: $(cat "$tmp/tty")"

step "unroutable topic, retry.max_attempts=1: exit 1, FAILED with NO_ROUTE/312"
lost="$tag.nowhere"
expect 1 publish --store "$store" --transport "$AMQP_URL" --topic "$lost" --set retry.max_attempts=1
[ "$(wc -l <"$tmp/out")" = 1 ] || fail "publish printed more than one stdout line"
if [ "$(summary_field published)" != 1 ] || [ "$(summary_field acked)" != 0 ] ||
   [ "$(summary_field failed)" != 1 ]; then
  fail "publish summary: $(cat "$tmp/out")"
fi
failed_id=$(grep -Eo '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$tmp/err" | head -1)
[ -n "$failed_id" ] || fail "publish did not name the FAILED message on stderr: $(cat "$tmp/err")"
expect 0 list --store "$store" --state failed --json
jq -e --arg id "$failed_id" --arg topic "$lost" \
  'length == 1 and .[0].id == $id and .[0].topic == $topic and .[0].state == "failed"
   and .[0].attempts == 1 and .[0].last_code == 312
   and (.[0].last_error | test("NO_ROUTE")) and (.[0].last_error | test("312"))' \
  "$tmp/out" >/dev/null || fail "list --state failed --json: $(cat "$tmp/out")"
expect 0 show --store "$store" "$failed_id" --json
jq -e --arg id "$failed_id" '.id == $id and .payload_bytes == 256 and (.payload | startswith("1 x"))' \
  "$tmp/out" >/dev/null || fail "show --json: $(cat "$tmp/out")"
expect 0 show --store "$store" "$failed_id"
grep -q 'NO_ROUTE' "$tmp/out" || fail "show does not print the last error"
expect 1 status --store "$store" --json
jq -e '.failed == 1 and .pending == 0' "$tmp/out" >/dev/null || fail "status: $(cat "$tmp/out")"

step "requeue --all-failed, then relay --until-empty with amqp.declare_queue=true: delivered"
expect 2 requeue --store "$store" 00000000-0000-7000-8000-000000000000
one_error_line "no message"
expect 0 requeue --store "$store" --all-failed
grep -qx 'requeued=1' "$tmp/out" || fail "requeue printed '$(cat "$tmp/out")'"
expect 0 status --store "$store" --json
jq -e '.failed == 0 and .retrying == 1' "$tmp/out" >/dev/null || fail "after requeue: $(cat "$tmp/out")"
expect 0 relay --store "$store" --transport "$AMQP_URL" --until-empty --max-seconds 60 \
  --set amqp.declare_queue=true
[ "$(wc -l <"$tmp/out")" = 1 ] || fail "relay printed more than one stdout line"
if [ "$(summary_field acked)" != 1 ] || [ "$(summary_field pending)" != 0 ] ||
   [ "$(summary_field failed_in_store)" != 0 ]; then
  fail "relay summary: $(cat "$tmp/out")"
fi
echo "    $(cat "$tmp/out")"
expect 0 status --store "$store" --json
jq -e '.sending == 0 and .retrying == 0 and .failed == 0' "$tmp/out" >/dev/null ||
  fail "status after relay: $(cat "$tmp/out")"
[ "$(queue_depth "$lost")" = 1 ] || fail "queue $lost holds '$(queue_depth "$lost")', expected 1"

step "purge: refused without --yes off a terminal; --yes purges"
expect 1 publish --store "$store" --transport "$AMQP_URL" --topic "$lost.2" --set retry.max_attempts=1
expect 2 purge --store "$store" --state failed
one_error_line "--yes"
expect 1 status --store "$store" --json
jq -e '.failed == 1' "$tmp/out" >/dev/null || fail "purge without --yes deleted something"
expect 0 purge --store "$store" --state failed --older-than 1h --yes
grep -qx 'purged=0' "$tmp/out" || fail "purge --older-than 1h: $(cat "$tmp/out")"
expect 0 purge --store "$store" --state failed --yes
grep -qx 'purged=1' "$tmp/out" || fail "purge --yes: $(cat "$tmp/out")"

step "a stuck message: fail it whatever its state, requeue it; purge --id deletes in any state"
# Publish with the broker unreachable: the messages stay SENDING (attempts 0),
# as a message no relay can ever send does. Five in one transaction are a
# packed batch in SQLite, one alone is a row.
stuck="sqlite://$tmp/stuck.db"
squeue="$tag.stuck"
for n in 5 1; do
  expect 4 publish --store "$stuck" --transport "amqp://127.0.0.1:1" --topic "$squeue" \
    --count "$n" --stall-seconds 1 --set transport.require_connect=false
  [ "$(summary_field published)" = "$n" ] || fail "stuck publish: $(cat "$tmp/out")"
done
expect 0 list --store "$stuck" --json
jq -e 'length == 6 and all(.[]; .state == "sending" and .attempts == 0)' "$tmp/out" >/dev/null ||
  fail "six SENDING messages expected: $(cat "$tmp/out")"
mapfile -t sid < <(jq -r '.[].id' "$tmp/out") # sid[0..4]: the batch, sid[5]: the row
expect 2 requeue --store "$stuck" "${sid[5]}"
one_error_line "not failed"
expect 0 fail --store "$stuck" "${sid[5]}" "${sid[1]}" --reason "topic has a wildcard"
grep -qx 'failed=2' "$tmp/out" || fail "fail printed '$(cat "$tmp/out")'"
[ ! -s "$tmp/err" ] || { cat "$tmp/err" >&2; fail "fail wrote to stderr"; }
expect 0 list --store "$stuck" --state failed --json
jq -e --arg a "${sid[1]}" --arg b "${sid[5]}" \
  'length == 2 and ([.[].id] | sort) == ([$a, $b] | sort)
   and all(.[]; .state == "failed" and .attempts == 0
               and .last_error == "marked failed by an operator: topic has a wildcard")' \
  "$tmp/out" >/dev/null || fail "list --state failed after fail: $(cat "$tmp/out")"
expect 0 show --store "$stuck" "${sid[5]}"
grep -q 'topic has a wildcard' "$tmp/out" || fail "show does not print the reason: $(cat "$tmp/out")"
expect 1 status --store "$stuck" --json
jq -e '.sending == 4 and .retrying == 0 and .failed == 2' "$tmp/out" >/dev/null ||
  fail "status after fail: $(cat "$tmp/out")"
expect 0 requeue --store "$stuck" "${sid[5]}"
grep -qx 'requeued=1' "$tmp/out" || fail "requeue after fail printed '$(cat "$tmp/out")'"

expect 2 fail --store "$stuck" 00000000-0000-7000-8000-000000000000
one_error_line "no message 00000000-0000-7000-8000-000000000000"
expect 2 fail --store "$stuck" "${sid[0]}" 00000000-0000-7000-8000-000000000000
one_error_line "no message"
expect 2 fail --store "$stuck" not-an-id
one_error_line "not a message id"
expect 2 fail --store "$stuck"
one_error_line "IDs"
expect 2 purge --store "$stuck" --id "${sid[2]}"
one_error_line "--yes"
expect 2 purge --store "$stuck" --id "${sid[2]}" 00000000-0000-7000-8000-000000000000 --yes
one_error_line "no message 00000000-0000-7000-8000-000000000000"
expect 2 purge --store "$stuck" --id 01234 --yes
one_error_line "not a message id"
expect 2 purge --store "$stuck" --id "${sid[2]}" --state failed --yes
one_error_line "--state"
expect 1 status --store "$stuck" --json
jq -e '.sending == 4 and .retrying == 1 and .failed == 1' "$tmp/out" >/dev/null ||
  fail "a refused fail or purge changed something: $(cat "$tmp/out")"
expect 0 purge --store "$stuck" --id "${sid[2]}" --id "${sid[1]}" --yes
grep -qx 'purged=2' "$tmp/out" || fail "purge --id printed '$(cat "$tmp/out")'"
expect 0 status --store "$stuck" --json
jq -e '.sending == 3 and .retrying == 1 and .failed == 0' "$tmp/out" >/dev/null ||
  fail "status after purge --id: $(cat "$tmp/out")"
expect 2 show --store "$stuck" "${sid[2]}"
one_error_line "no message"

# a relay delivers the four left, never the deleted SENDING one
amqp-declare-queue --url="$AMQP_URL" --queue="$squeue" --durable >/dev/null
expect 0 relay --store "$stuck" --transport "$AMQP_URL" --until-empty --max-seconds 60
if [ "$(summary_field acked)" != 4 ] || [ "$(summary_field pending)" != 0 ] ||
   [ "$(summary_field failed_in_store)" != 0 ]; then
  fail "relay after fail/purge --id: $(cat "$tmp/out")"
fi
[ "$(queue_depth "$squeue")" = 4 ] || fail "queue $squeue holds '$(queue_depth "$squeue")', expected 4"

step "bad input: the documented exit code, one stderr line, nothing created"
expect 2 status --store "$store" --bogus
one_error_line "--bogus"
expect 2 frobnicate
expect 2 publish --store "sqlite://$tmp/new1.db" --transport "foo://127.0.0.1" --topic t
one_error_line "foo"
[ ! -e "$tmp/new1.db" ] || fail "unknown scheme: a store file was created"
expect 2 publish --store "foo:///x.db" --transport "$AMQP_URL" --topic t
one_error_line "foo"
expect 2 publish --store "sqlite://$tmp/new2.db" --transport "amqp://127.0.0.1:notaport" --topic t
one_error_line "port"
[ ! -e "$tmp/new2.db" ] || fail "malformed URL: a store file was created"
expect 2 status --store "sqlite:$tmp/new3.db"
one_error_line "scheme"
expect 2 status --store "$store" --set retry.max_attempts=zero
one_error_line "retry.max_attempts"
expect 2 publish --store "sqlite://$tmp/new4.db" --transport "$AMQP_URL" --topic t --stall-seconds soon
one_error_line "--stall-seconds"
[ ! -e "$tmp/new4.db" ] || fail "bad --stall-seconds: a store file was created"

for cmd in status list "show 00000000-0000-7000-8000-000000000000" "requeue --all-failed" \
           "purge --state failed --yes" "fail 00000000-0000-7000-8000-000000000000" \
           "purge --id 00000000-0000-7000-8000-000000000000 --yes"; do
  # shellcheck disable=SC2086
  expect 3 $cmd --store "sqlite://$tmp/missing.db"
  one_error_line "does not exist"
  [ ! -e "$tmp/missing.db" ] || fail "$cmd created the missing store file"
done
expect 3 relay --store "sqlite://$tmp/missing.db" --transport "$AMQP_URL" --until-empty
one_error_line "does not exist"
[ ! -e "$tmp/missing.db" ] || fail "relay created the missing store file"

head -c 8192 /dev/urandom >"$tmp/corrupt.db"
cp "$tmp/corrupt.db" "$tmp/corrupt.orig"
expect 3 status --store "sqlite://$tmp/corrupt.db"
one_error_line "corrupt.db"
expect 3 publish --store "sqlite://$tmp/corrupt.db" --transport "$AMQP_URL" --topic "$queue"
one_error_line "corrupt.db"
cmp -s "$tmp/corrupt.db" "$tmp/corrupt.orig" || fail "the corrupt store file was modified"

unreach="sqlite://$tmp/unreachable.db"
expect 4 publish --store "$unreach" --transport "amqp://127.0.0.1:1" --topic "$queue" --count 10
one_error_line "unreachable"
[ ! -e "$tmp/unreachable.db" ] || fail "unreachable broker: a store file was created"
expect 4 relay --store "$store" --transport "amqp://127.0.0.1:1" --until-empty
one_error_line "unreachable"

echo "PASS"
