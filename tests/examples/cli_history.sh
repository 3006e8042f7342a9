#!/usr/bin/env bash
# cli_history.sh - `ackbox show` prints a message's attempt history: one line
# per attempt (time, outcome, code, text, escaped), and --json an
# "attempts_history" array. The entry comes from `ackbox fail` (an operator's
# attempt), so no broker is needed.
# usage: cli_history.sh PATH/TO/ackbox
set -euo pipefail
cli=${1:?usage: cli_history.sh ACKBOX_BINARY}
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v jq >/dev/null || fail "jq is not installed (scripts/install-deps.sh)"
base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
tmp=$(mktemp -d "$base/cli-history-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
store="sqlite://$tmp/o.db"

# a stored message: the publish is stopped while its broker is unreachable
timeout -s INT 3 "$cli" publish --store "$store" --transport amqp://127.0.0.1:1 \
  --set transport.require_connect=false --topic t --count 1 >/dev/null 2>&1 || true
id=$("$cli" list --store "$store" --json | jq -r '.[0].id')
[ -n "$id" ] && [ "$id" != null ] || fail "no stored message"

"$cli" show --store "$store" "$id" >"$tmp/out"
grep -q '^history       -$' "$tmp/out" || { cat "$tmp/out"; fail "no empty history line"; }
[ "$("$cli" show --store "$store" --json "$id" | jq -c '.attempts_history')" = "[]" ] ||
  fail "--json: attempts_history is not []"

reason=$(printf 'stuck "in" \\ queue\tsee ticket 42')
"$cli" fail --store "$store" --reason "$reason" "$id" >/dev/null
"$cli" show --store "$store" "$id" >"$tmp/out"
grep -q '^history       1 attempt, oldest first' "$tmp/out" || { cat "$tmp/out"; fail "no history header"; }
line=$(grep -E '^  [0-9]{4}-[0-9]{2}-[0-9]{2}T.* operator +code 0 ' "$tmp/out") ||
  { cat "$tmp/out"; fail "no operator attempt line"; }
case "$line" in
  *'stuck "in" \x5c queue\x09see ticket 42') ;;
  *) fail "attempt text not escaped on one line: $line" ;;
esac
"$cli" show --store "$store" --json "$id" >"$tmp/json"
[ "$(jq -r '.attempts_history | length' "$tmp/json")" = 1 ] || fail "--json: not one attempt"
[ "$(jq -r '.attempts_history[0].outcome' "$tmp/json")" = operator ] || fail "--json: outcome"
[ "$(jq -r '.attempts_history[0].text' "$tmp/json")" = "$reason" ] || fail "--json: text not round-tripped"
[ "$(jq -r '.attempts_history[0].at_ms | type' "$tmp/json")" = number ] || fail "--json: at_ms"
echo "ok: show prints the history (human and --json)"
