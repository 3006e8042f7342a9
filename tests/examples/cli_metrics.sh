#!/usr/bin/env bash
# cli_metrics.sh - the operator's view of a relay's metrics, without a broker
# (the in-process loopback transport), so it runs in every pass:
#  * `ackbox relay --metrics-listen 127.0.0.1:PORT` serves /metrics, which
#    Prometheus' validator (promtool check metrics) accepts, counting the 25
#    messages it relays (stored earlier while no broker answered) and 0
#    pending after;
#  * /healthz answers 200 "ok"; an unknown path 404;
#  * `ackbox status --openmetrics` prints the same families once;
#  * a busy address is refused (exit 2) naming it.
# Synchronisation is on the server's answers (bounded polling), never a sleep.
# usage: cli_metrics.sh PATH/TO/ackbox
set -euo pipefail
cli=${1:?usage: cli_metrics.sh ACKBOX_BINARY}
fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in curl promtool python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done
# shellcheck source=tests/fixtures/lib.sh
. "$(dirname "$0")/../fixtures/lib.sh"

base=${ACKBOX_TEST_TMP:-/tmp}
mkdir -p "$base"
dir=$(mktemp -d "$base/cli-metrics-XXXXXX")
relay_pid=
cleanup() { [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
store="sqlite://$dir/outbox.db"
port=$(free_port)

# stored while no broker answers (exit 4: they stay in the store)
rc=0
"$cli" publish --store "$store" --transport amqp://127.0.0.1:1 --topic orders --count 25 \
  --set transport.require_connect=false --set log.level=error --stall-seconds 1 \
  > "$dir/publish.out" 2>&1 || rc=$?
[ "$rc" = 4 ] || fail "publish to nowhere exited $rc, want 4: $(cat "$dir/publish.out")"
"$cli" relay --store "$store" --transport loopback://m --metrics-listen "127.0.0.1:$port" \
  > "$dir/relay.out" 2> "$dir/relay.err" &
relay_pid=$!

ok=
for _ in $(seq 1 200); do # up to 20 s
  if curl -sf "http://127.0.0.1:$port/healthz" > "$dir/health" 2>/dev/null; then ok=1; break; fi
  kill -0 "$relay_pid" 2>/dev/null || fail "relay exited: $(cat "$dir/relay.err")"
  sleep 0.1
done
[ -n "$ok" ] || fail "no /healthz answer on 127.0.0.1:$port within 20 s"
[ "$(cat "$dir/health")" = ok ] || fail "/healthz said: $(cat "$dir/health")"

curl -sf "http://127.0.0.1:$port/metrics" > "$dir/metrics" || fail "GET /metrics failed"
promtool check metrics < "$dir/metrics" || fail "promtool refused /metrics"
for family in messaging_client_operation_duration_seconds ackbox_pending_messages \
              ackbox_oldest_pending_age_seconds ackbox_transport_connected; do
  grep -q "^# TYPE $family " "$dir/metrics" || fail "/metrics lacks $family"
done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/nope")
[ "$code" = 404 ] || fail "/nope answered $code, want 404"

# the relay sent the 25 published before it (the store scan finds them)
acked=
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$port/metrics" > "$dir/metrics" || fail "GET /metrics failed"
  acked=$(sed -n 's/^ackbox_acked_messages_total{[^}]*} \([0-9]*\)$/\1/p' "$dir/metrics")
  [ "${acked:-0}" -ge 25 ] && break
  sleep 0.1
done
[ "$acked" = 25 ] || fail "ackbox_acked_messages_total is '$acked', want 25"
grep -q '^ackbox_pending_messages{state="sending"} 0$' "$dir/metrics" ||
  fail "pending sending not 0: $(grep pending_messages "$dir/metrics")"

# a second relay cannot take the same address
if "$cli" relay --store "$store" --transport loopback://m --metrics-listen "127.0.0.1:$port" \
     --max-seconds 2 > /dev/null 2> "$dir/second.err"; then
  fail "a second relay listened on a busy address"
else
  rc=$?
  [ "$rc" = 2 ] || fail "busy address: exit $rc, want 2"
  grep -q "127.0.0.1:$port" "$dir/second.err" || fail "busy address not named: $(cat "$dir/second.err")"
fi

kill -TERM "$relay_pid"
wait "$relay_pid" || fail "relay stopped by SIGTERM exited $? with nothing left"
relay_pid=

"$cli" status --store "$store" --openmetrics > "$dir/status.prom" || fail "status --openmetrics exited $?"
promtool check metrics < "$dir/status.prom" || fail "promtool refused status --openmetrics"
grep -q '^ackbox_pending_messages{state="failed"} 0$' "$dir/status.prom" || fail "status text lacks pending"
echo "cli_metrics: ok (acked=$acked, promtool accepted both)"
