# shellcheck shell=bash disable=SC2154,SC2034
# The crash harness's view of the Kafka mock cluster (tests/crash/harness.sh
# sources this after the fixture's env file; the interface is in that file's
# header).
adapter_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

crash_url=$KAFKA_URL
crash_sets=()

consumer_start() { :; } # kcat reads the topic from the beginning afterwards

# Prints the first word of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  timeout 120 kcat -C -b "$KAFKA_BOOTSTRAP" -t "$1" -o beginning -e -q -f '%s\n' | awk '{print $1}'
}

broker_down() { bash "$adapter_dir/kafka-mock.sh" down "$KAFKA_FIXTURE_DIR"; }
broker_up() { bash "$adapter_dir/kafka-mock.sh" up "$KAFKA_FIXTURE_DIR"; }
broker_evidence() { cp "$KAFKA_FIXTURE_DIR/log" "$work/kafka-mock.log" 2>/dev/null || true; }
