#!/usr/bin/env bash
# valgrind memcheck over the publish and relay paths of the CLI (library,
# SQLite store, in-process loopback transport): no invalid access, no leak.
#   valgrind.sh CLI CRASHPOINT_CLI
set -euo pipefail
cli=${1:?cli} cpcli=${2:?crash-point cli}
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
work=$(mktemp -d "$base/valgrind-XXXXXX")
trap 'rm -rf "$work"' EXIT
vg=(valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99)
store="sqlite://$work/outbox.db"

# publish: store, send, confirm, delete
out=$("${vg[@]}" "$cli" publish --store "$store" --transport loopback://vg --topic t --count 2000)
grep -q "acked=2000 failed=0" <<<"$out" || { echo "publish: $out" >&2; exit 1; }

# relay: rows left by a publisher that died after sending, delivered by relay
rc=0
ACKBOX_CRASH_AT=after_send "$cpcli" publish --store "$store" --transport loopback://vg --topic t \
  --count 1000 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 137 ] || { echo "the crash-point publisher did not die (exit $rc)" >&2; exit 1; }
pending=$("$cli" status --store "$store" --json | jq .pending)
[ "$pending" -gt 0 ] || { echo "nothing pending after the crash" >&2; exit 1; }
out=$("${vg[@]}" "$cli" relay --store "$store" --transport loopback://vg --until-empty --max-seconds 120)
echo "$out"
[ "$("$cli" status --store "$store" --json | jq .pending)" -eq 0 ] || { echo "relay left rows" >&2; exit 1; }
"${vg[@]}" "$cli" status --store "$store" --json >/dev/null
echo "valgrind: publish (2000), relay ($pending pending) and status clean"
