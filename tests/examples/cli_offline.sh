#!/usr/bin/env bash
# cli_offline.sh - the ackbox command without a broker (an unreachable one,
# or the in-process loopback transport), so it runs in the sanitizer pass too:
#  * admin commands never create or change a store: a missing file or another
#    application's database is exit 3 and is left byte for byte as it was;
#  * publish creates its store only when it stores a message: exit 2 or 4
#    before that leaves no file;
#  * --payload-file and --lines refuse more than message.max_bytes (exit 2)
#    without storing anything;
#  * relay as a service: SIGTERM/SIGINT stop it, it says how many messages it
#    leaves stored and exits 4 (0 when nothing is left); the next relay sends
#    them all;
#  * `ackbox bench` runs the benchmark installed next to ackbox;
#  * `cmake --install` puts ackbox, ackbox-bench and ackbox(1) in place, and the
#    man page covers every command and exit code.
# Synchronisation is on the CLI's own output or exit, never a sleep.
# usage: cli_offline.sh PATH/TO/ackbox BUILD_DIR
set -euo pipefail
usage="usage: cli_offline.sh ACKBOX_BINARY BUILD_DIR"
cli=${1:?$usage}
build=${2:?$usage}

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
for tool in jq python3 cmake; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done

base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
tmp=$(mktemp -d "$base/cli-offline-XXXXXX")
relay_pid=""
cleanup() {
  [ -z "$relay_pid" ] || kill -9 "$relay_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

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
one_error_line() {
  [ "$(wc -l <"$tmp/err")" = 1 ] || { cat "$tmp/err" >&2; fail "expected exactly one stderr line"; }
  [ ! -s "$tmp/out" ] || { cat "$tmp/out" >&2; fail "expected nothing on stdout"; }
  if [ -n "${1:-}" ]; then
    grep -q -- "$1" "$tmp/err" || { cat "$tmp/err" >&2; fail "stderr does not mention '$1'"; }
  fi
  return 0
}
summary_field() { tr ' ' '\n' <"$tmp/out" | sed -n "s/^$1=//p"; }
no_file() { [ ! -e "$1" ] || fail "$2: $1 was created"; }

nowhere="amqp://127.0.0.1:1" # nothing listens there
idle=(--set transport.require_connect=false --set log.level=error)

step "admin commands on a missing store: exit 3, nothing created"
missing="$tmp/missing.db"
for cmd in status list "show 00000000-0000-7000-8000-000000000000" "requeue --all-failed" \
           "purge --state failed --yes" "fail 00000000-0000-7000-8000-000000000000"; do
  # shellcheck disable=SC2086
  expect 3 $cmd --store "sqlite://$missing"
  one_error_line "does not exist"
  no_file "$missing" "$cmd"
done
expect 3 relay --store "sqlite://$missing" --transport "$nowhere" "${idle[@]}" --until-empty
one_error_line "does not exist"
no_file "$missing" "relay"
expect 2 status --store "sqlite://$missing" --set store.create=open
one_error_line "never creates a store"
no_file "$missing" "status --set store.create=open"

step "admin commands on another application's SQLite database: exit 3, file unchanged"
foreign="$tmp/app.db"
python3 - "$foreign" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, what TEXT)")
db.execute("INSERT INTO orders(what) VALUES ('42 apples')")
db.commit()
db.close()
PY
cp "$foreign" "$tmp/app.orig"
for cmd in status list "requeue --all-failed" "purge --state failed --yes"; do
  # shellcheck disable=SC2086
  expect 3 $cmd --store "sqlite://$foreign"
  one_error_line "not an ackbox store"
done
expect 3 relay --store "sqlite://$foreign" --transport "$nowhere" "${idle[@]}" --until-empty
one_error_line "not an ackbox store"
cmp -s "$foreign" "$tmp/app.orig" || fail "another application's database was modified"
no_file "$foreign-wal" "status on a foreign database (WAL mode switched on)"

step "publish creates the store only when it stores a message"
new="$tmp/new.db"
expect 4 publish --store "sqlite://$new" --transport "$nowhere" --topic t --count 3
one_error_line "unreachable"
no_file "$new" "publish to an unreachable broker (exit 4)"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" --topic t \
  --payload 0123456789abcdef --set message.max_bytes=8
one_error_line "message.max_bytes"
no_file "$new" "publish of a payload over the limit (exit 2)"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" --topic t --lines --count 2
one_error_line "--lines"
no_file "$new" "publish --lines --count (exit 2)"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" --topic t --lines \
  --payload-file "$tmp/no-such-input"
one_error_line "no-such-input"
no_file "$new" "publish --lines of a missing file (exit 2)"

step "--payload-file and --lines refuse more than message.max_bytes, storing nothing"
head -c 4096 /dev/zero >"$tmp/4k"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" --topic t \
  --payload-file "$tmp/4k" --set message.max_bytes=4095
one_error_line "more than 4095 bytes"
no_file "$new" "--payload-file over the limit"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" --topic t --payload-file /dev/zero
one_error_line "more than 1048576 bytes"
no_file "$new" "--payload-file /dev/zero"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" "${idle[@]}" --topic t --lines \
  --payload-file /dev/zero
one_error_line "line 1 of /dev/zero is longer than 1048576 bytes"
no_file "$new" "--lines of /dev/zero"
# a line of exactly the limit is fine, one byte more is not; lines before it are stored
printf 'ab\nabcd\nabcde\nnever read\n' >"$tmp/lines"
expect 2 publish --store "sqlite://$new" --transport "$nowhere" "${idle[@]}" --topic t --lines \
  --payload-file "$tmp/lines" --set message.max_bytes=4 --stall-seconds 1
grep -q "line 3 of $tmp/lines is longer than 4 bytes" "$tmp/err" || fail "stderr: $(cat "$tmp/err")"
[ "$(summary_field published)" = 2 ] || fail "publish --lines stored: $(cat "$tmp/out")"
expect 0 list --store "sqlite://$new" --json
jq -e 'length == 2 and ([.[].payload_bytes] | sort) == [2, 4]' "$tmp/out" >/dev/null ||
  fail "the two lines before the long one: $(cat "$tmp/out")"

step "control characters in what the CLI echoes are escaped: topic, error line, list, show"
esc="sqlite://$tmp/esc.db"
evil=$(printf 'a\nb\033[31mred')
expect 4 publish --store "$esc" --transport "$nowhere" "${idle[@]}" --topic "$evil" \
  --payload "$(printf 'x\033[2Jy')" --stall-seconds 1
expect 2 publish --store "$esc" --transport "mqtt://127.0.0.1:1" "${idle[@]}" --topic "$evil"
one_error_line 'control character'
if grep -q "$(printf '\033')" "$tmp/err"; then fail "an ESC reached stderr"; fi
expect 0 list --store "$esc"
[ "$(wc -l <"$tmp/out")" = 2 ] || fail "list printed the topic on several lines: $(cat -A "$tmp/out")"
grep -qF 'a\nb\x1b[31mred' "$tmp/out" || fail "list does not show the escaped topic: $(cat -A "$tmp/out")"
esc_id=$(awk 'NR == 2 { print $1 }' "$tmp/out")
expect 0 show --store "$esc" "$esc_id"
if grep -q "$(printf '\033')" "$tmp/out"; then fail "show printed an ESC: $(cat -A "$tmp/out")"; fi
grep -qF 'topic         a\nb\x1b[31mred' "$tmp/out" || fail "show: $(cat -A "$tmp/out")"

step "relay as a service: SIGTERM and SIGINT stop it, it says what it leaves, exit 4"
svc="sqlite://$tmp/svc.db"
expect 4 publish --store "$svc" --transport "$nowhere" "${idle[@]}" --topic t --count 5 \
  --stall-seconds 1
[ "$(summary_field published)" = 5 ] || fail "publish for the relay: $(cat "$tmp/out")"
# run_relay SIGNAL WANT_RC: a relay that cannot connect, stopped by SIGNAL
run_relay() {
  local sig=$1 want=$2 rc=0 deadline=$((SECONDS + 30))
  # emptied here, not only by the child's redirection, which may come after
  # the loop below has read the previous relay's "cannot connect"
  : >"$tmp/relay.err"
  "$cli" relay --store "$svc" --transport "$nowhere" --set transport.require_connect=false \
    >"$tmp/relay.out" 2>"$tmp/relay.err" </dev/null &
  relay_pid=$!
  # it is up once the library says it cannot connect (a warning on stderr)
  until grep -q "cannot connect" "$tmp/relay.err"; do
    kill -0 "$relay_pid" 2>/dev/null || fail "relay exited early: $(cat "$tmp/relay.err")"
    [ $SECONDS -lt $deadline ] || fail "relay did not start within 30 s"
    sleep 0.05
  done
  kill -"$sig" "$relay_pid"
  wait "$relay_pid" || rc=$?
  relay_pid=""
  [ "$rc" = "$want" ] || fail "relay stopped by SIG$sig exited $rc, expected $want: $(cat "$tmp/relay.err")"
  [ "$(wc -l <"$tmp/relay.out")" = 1 ] || fail "relay stdout: $(cat "$tmp/relay.out")"
}
run_relay TERM 4
grep -q "^acked=0 failed=0 pending=5 failed_in_store=0 " "$tmp/relay.out" ||
  fail "relay summary: $(cat "$tmp/relay.out")"
grep -q "stopped by SIGTERM: 5 message(s) left in the store for the next relay (5 sending, 0 retrying)" \
  "$tmp/relay.err" || fail "relay did not say what it leaves: $(cat "$tmp/relay.err")"
run_relay INT 4
grep -q "stopped by SIGINT: 5 message(s) left in the store" "$tmp/relay.err" ||
  fail "relay after SIGINT: $(cat "$tmp/relay.err")"
expect 0 status --store "$svc" --json
jq -e '.sending == 5 and .failed == 0' "$tmp/out" >/dev/null || fail "after the stops: $(cat "$tmp/out")"
# the next relay sends every one of them
expect 0 relay --store "$svc" --transport loopback://offline --until-empty --max-seconds 60
grep -q "^acked=5 failed=0 pending=0 failed_in_store=0 " "$tmp/out" ||
  fail "the next relay: $(cat "$tmp/out")"
run_relay TERM 0
grep -q "stopped by SIGTERM: nothing pending left in the store; 0 FAILED" "$tmp/relay.err" ||
  fail "an idle relay stopped: $(cat "$tmp/relay.err")"

step "status names the keys a FAILED message blocks (delivery.order=key), and forgets them on requeue"
ord="sqlite://$tmp/ordered.db"
expect 4 publish --store "$ord" --transport "$nowhere" "${idle[@]}" --set delivery.order=key \
  --topic t --key k1 --count 3 --stall-seconds 1
expect 4 publish --store "$ord" --transport "$nowhere" "${idle[@]}" --set delivery.order=key \
  --topic t --key k2 --count 2 --stall-seconds 1
expect 0 list --store "$ord" --json
head_k1=$(jq -r '.[0].id' "$tmp/out") # ids sort by creation: k1's first
expect 0 fail --store "$ord" "$head_k1" --reason "blocked-key test"
expect 1 status --store "$ord"
grep -q "^blocked keys    1 " "$tmp/out" || { cat "$tmp/out" >&2; fail "status does not count one blocked key"; }
grep -q "^  key k1  held by $head_k1, 2 waiting\$" "$tmp/out" ||
  { cat "$tmp/out" >&2; fail "status does not name k1, its FAILED head and its 2 waiting"; }
grep -q "key k2" "$tmp/out" && fail "status calls k2 blocked: nothing of k2 FAILED"
expect 1 status --store "$ord" --json
[ "$(jq .blocked_keys "$tmp/out")" = 1 ] || fail "status --json: blocked_keys $(jq .blocked_keys "$tmp/out"), not 1"
# relay --until-empty over a store whose pending messages all wait behind the
# FAILED one: nothing is left to send, it stops at once (exit 1), saying why
blk="sqlite://$tmp/blocked.db"
expect 4 publish --store "$blk" --transport "$nowhere" "${idle[@]}" --set delivery.order=key \
  --topic t --key k1 --count 3 --stall-seconds 1
expect 0 list --store "$blk" --json
expect 0 fail --store "$blk" "$(jq -r '.[0].id' "$tmp/out")"
t0=$SECONDS
expect 1 relay --store "$blk" --transport "$nowhere" --set transport.require_connect=false \
  --set delivery.order=key --until-empty --max-seconds 60
[ $((SECONDS - t0)) -lt 30 ] || fail "relay --until-empty waited $((SECONDS - t0)) s for blocked keys"
grep -q "2 message(s) wait behind FAILED messages that block 1 key(s)" "$tmp/err" ||
  fail "relay --until-empty on blocked keys: $(cat "$tmp/err")"
expect 0 requeue --store "$ord" "$head_k1"
expect 0 status --store "$ord" --json
[ "$(jq .blocked_keys "$tmp/out")" = 0 ] || fail "a requeued head still blocks its key"

step "ackbox bench runs the benchmark next to ackbox"
expect 0 bench --help
grep -q "usage: ackbox-bench" "$tmp/out" || fail "ackbox bench --help: $(cat "$tmp/out" "$tmp/err")"
expect 0 help bench
grep -q "ackbox-bench" "$tmp/out" || fail "ackbox help bench: $(cat "$tmp/out")"
expect 2 help nosuch
grep -q "unknown command 'nosuch'" "$tmp/err" || fail "ackbox help nosuch: $(cat "$tmp/err")"
expect 2 --version extra
expect 2 status --store "sqlite://$tmp/none.db" --json --openmetrics
grep -q "one output format" "$tmp/err" || fail "status --json --openmetrics: $(cat "$tmp/err")"
rc=0
ACKBOX_BENCH="$tmp/no-bench" "$cli" bench --help >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" = 2 ] || fail "a missing benchmark exited $rc, expected 2"
one_error_line "no-bench"

step "cmake --install: ackbox, ackbox-bench and ackbox(1); the man page covers every command"
# a test build refuses to install unless told it is a test (CMakeLists.txt)
ACKBOX_INSTALL_TEST_BUILD=1 cmake --install "$build" --prefix "$tmp/inst" >/dev/null
for f in bin/ackbox bin/ackbox-bench share/man/man1/ackbox.1; do
  [ -e "$tmp/inst/$f" ] || fail "not installed: $f"
done
man1="$tmp/inst/share/man/man1/ackbox.1"
expect 0 --help
cmds=$(sed -n '/^Commands:/,/^$/p' "$tmp/out" | awk 'NF { print $1 }' | grep -v Commands:)
[ "$(echo "$cmds" | wc -l)" -ge 9 ] || fail "commands in --help: $cmds"
for c in $cmds; do
  grep -q "^\.B ackbox $c\$" "$man1" || fail "ackbox(1) has no synopsis of '$c'"
  grep -Eq "^\.B $c\$|^\.BR $c " "$man1" || fail "ackbox(1) does not describe '$c'"
done
for code in 0 1 2 3 4; do
  sed -n '/^\.SH EXIT STATUS/,/^\.SH /p' "$man1" | grep -q "^\.B $code\$" ||
    fail "ackbox(1) does not explain exit code $code"
done
# every request is a man(7) macro or a comment: nothing renders as garbage
bad=$(grep -E '^\.' "$man1" | grep -Ev '^\.(\\"|TH|SH|SS|PP|IP|TP|RS|RE|B|I|BR|BI|IR|RB|RI|br|nf|fi)( |$)' || true)
[ -z "$bad" ] || fail "ackbox(1) uses requests outside man(7): $bad"

echo "PASS"
