# shellcheck shell=bash disable=SC2154,SC2034
# The crash harness's view of mosquitto (tests/crash/harness.sh sources this
# after the fixture's env file; the interface is in that file's header).
adapter_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

crash_url=$MQTT_URL
crash_sets=()
sub_pid=""

consumer_start() { # topic
  # a persistent session subscribed before anything is published; it
  # reconnects by itself after a broker restart
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" -E
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -c -i "c-$1" -t "$1" > "$work/$1.mqtt" 2>/dev/null &
  sub_pid=$!
  pids+=("$sub_pid")
}

# Prints the first word of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  local t=$1 want=$2
  # wait (bounded) until every ledger number arrived, then stop reading
  local deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    if [ -z "$(comm -23 "$want" <(awk '{print $1}' "$work/$t.mqtt" | sort -u))" ]; then break; fi
    sleep 0.2
  done
  kill "$sub_pid" 2>/dev/null || true
  wait "$sub_pid" 2>/dev/null || true
  awk '{print $1}' "$work/$t.mqtt"
}

broker_down() { bash "$adapter_dir/mosquitto.sh" term "$MOSQUITTO_FIXTURE_DIR"; } # see docs/brokers/mqtt.md

broker_up() { # publisher pid, topic (held while the subscriber re-attaches)
  # mosquitto 2.0.11 queues nothing for a restored offline session until its
  # client reconnects (docs/brokers/mqtt.md): hold the publisher until the
  # subscriber is back, so the test measures ackbox, not that broker limit
  kill -STOP "$1" 2>/dev/null || true
  local before
  before=$(grep -c "as c-$2 " "$MOSQUITTO_FIXTURE_DIR/log" || true)
  bash "$adapter_dir/mosquitto.sh" restart "$MOSQUITTO_FIXTURE_DIR" >/dev/null
  local deadline=$((SECONDS + 30))
  until [ "$(grep -c "as c-$2 " "$MOSQUITTO_FIXTURE_DIR/log" || true)" -gt "$before" ]; do
    [ $SECONDS -lt $deadline ] || { kill -CONT "$1" 2>/dev/null; fail "subscriber did not reconnect"; }
    sleep 0.1
  done
  kill -CONT "$1" 2>/dev/null || true
}

broker_evidence() { cp "$MOSQUITTO_FIXTURE_DIR/log" "$work/mosquitto.log" 2>/dev/null || true; }
