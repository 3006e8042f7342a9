# shellcheck shell=bash disable=SC2154,SC2034
# The crash harness's view of RabbitMQ (tests/crash/harness.sh sources this
# after the fixture's env file; the interface is in that file's header).
adapter_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

crash_url=$AMQP_URL
crash_sets=(--set amqp.declare_queue=true)

consumer_start() { # topic
  # The queue exists, durably, before the fault: RabbitMQ killed within
  # milliseconds of a queue's declaration (which the relay would do on its
  # first send) can come back without the queue, and with it go messages
  # it had confirmed. Applications declare their queues up front too.
  amqp-declare-queue --url="$AMQP_URL" -q "$1" -d > /dev/null ||
    fail "cannot declare queue $1"
}

# Prints the first word of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  local t=$1 count
  count=$(bash "$adapter_dir/rabbitmq.sh" queues "$RABBITMQ_FIXTURE_DIR" | awk -v q="$t" '$1==q {print $2}')
  # no queue: nothing was ever sent (the relay declares it on the first
  # send); every ledger number then counts as lost
  [ -n "$count" ] && [ "$count" -gt 0 ] || return 0
  timeout 300 amqp-consume --url="$AMQP_URL" -q "$t" -c "$count" cat | fold -w "$size" | awk '{print $1}'
}

broker_down() { bash "$adapter_dir/rabbitmq.sh" kill "$RABBITMQ_FIXTURE_DIR"; } # SIGKILL: a crash
broker_up() { bash "$adapter_dir/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" >/dev/null; }
