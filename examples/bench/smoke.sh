#!/usr/bin/env bash
# smoke.sh BENCH FIXTURE KEY [ARG...]: runs `BENCH --smoke ARG...` against the
# broker that the ctest fixture FIXTURE started, reading its URL (KEY) from
# the fixture's env file. A missing fixture is a failure, never a skip. The
# checks are the bench's own (--smoke): raw, reliable and hand-written rounds,
# each complete and sane, or exit 1.
set -euo pipefail
bench=${1:?usage: smoke.sh BENCH FIXTURE KEY}
fixture=${2:?usage: smoke.sh BENCH FIXTURE KEY}
key=${3:?usage: smoke.sh BENCH FIXTURE KEY}
env="${ACKBOX_FIXTURE_DIR:?run through ctest}/$fixture/env"
[ -f "$env" ] || { echo "smoke: fixture '$fixture' did not start: $env missing" >&2; exit 1; }
url=$(sed -n "s/^$key=//p" "$env")
[ -n "$url" ] || { echo "smoke: $env has no $key" >&2; exit 1; }
shift 3
exec "$bench" --smoke --transport "$url" "$@"
