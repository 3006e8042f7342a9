#!/usr/bin/env bash
# The scale-out run (docs/scaleout.md): relay processes sharing one
# PostgreSQL outbox deliver a backlog to RabbitMQ; pg_scaleout checks what
# arrived with its own consumer.
#   scaleout.sh test PROG FIXTURE_DIR [pg_scaleout args...]
#       ctest: servers from the fixtures FIXTURE_DIR/postgres and
#       FIXTURE_DIR/pg_rabbitmq
#   scaleout.sh test-kafka PROG FIXTURE_DIR [pg_scaleout args...]
#       the same to the mock cluster of the fixture FIXTURE_DIR/kafka-mock
#   scaleout.sh bench PROG [MESSAGES [RELAYS...]]
#       starts private servers, runs MESSAGES (default 100000) with 1, 2 and
#       4 relays (or RELAYS), prints a Markdown table, stops the servers
#   scaleout.sh bench-kafka PROG MOCK [MESSAGES [RELAYS...]]
#       the same to Kafka: librdkafka's mock cluster served by MOCK (the
#       build's kafka-mock-cluster)
#   SCALEOUT_ARGS: more pg_scaleout arguments for bench and bench-kafka
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
verb=${1:?usage: scaleout.sh test|test-kafka|bench|bench-kafka PROG ...}
prog=${2:?usage: scaleout.sh test|bench PROG ...}
shift 2

# shellcheck disable=SC1091
env_of() { (. "$1/env"; eval "echo \"\$$2\""); }

case "$verb" in
test)
  fx=${1:?FIXTURE_DIR}; shift
  exec "$prog" --pg "$(env_of "$fx/postgres" PG_URL)" \
    --amqp "$(env_of "$fx/pg_rabbitmq" AMQP_URL)" "$@"
  ;;
test-kafka)
  fx=${1:?FIXTURE_DIR}; shift
  exec "$prog" --pg "$(env_of "$fx/postgres" PG_URL)" \
    --kafka "$(env_of "$fx/kafka-mock" KAFKA_URL)" "$@"
  ;;
bench|bench-kafka)
  [ "$verb" = bench ] || { mock=${1:?bench-kafka needs the kafka-mock-cluster program}; shift; }
  n=${1:-100000}; shift || true
  relays=("$@"); [ ${#relays[@]} -gt 0 ] || relays=(1 2 4)
  tmp=$(mktemp -d /tmp/ackbox-scaleout-XXXXXX)
  chmod 755 "$tmp"
  cleanup() {
    bash "$here/postgres.sh" stop "$tmp/pg" >/dev/null 2>&1 || true
    bash "$root/brokers/amqp/tests/rabbitmq.sh" stop "$tmp/rmq" >/dev/null 2>&1 || true
    bash "$root/brokers/kafka/tests/kafka-mock.sh" stop "$tmp/kafka" >/dev/null 2>&1 || true
    rm -rf "$tmp"
  }
  trap cleanup EXIT
  bash "$here/postgres.sh" start "$tmp/pg" >&2
  pg=$(env_of "$tmp/pg" PG_URL)
  if [ "$verb" = bench ]; then
    bash "$root/brokers/amqp/tests/rabbitmq.sh" start "$tmp/rmq" >&2
    broker=(--amqp "$(env_of "$tmp/rmq" AMQP_URL)")
  else
    bash "$root/brokers/kafka/tests/kafka-mock.sh" start "$tmp/kafka" "$mock" >&2
    broker=(--kafka "$(env_of "$tmp/kafka" KAFKA_URL)")
  fi
  read -r -a extra <<<"${SCALEOUT_ARGS:-}"
  echo "| relays | messages | seconds | msg/s | delivered | duplicates | missing |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for r in "${relays[@]}"; do
    line=$("$prog" --pg "$pg" "${broker[@]}" --messages "$n" --relays "$r" --quiet ${extra[@]+"${extra[@]}"})
    echo "$line" >&2
    get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$line"; }
    echo "| $r | $n | $(get seconds) | $(get msg_per_s) | $(get delivered) | $(get duplicates) | $(get missing) |"
  done
  ;;
*) echo "unknown verb $verb" >&2; exit 2 ;;
esac
