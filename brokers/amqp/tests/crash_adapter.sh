# shellcheck shell=bash disable=SC2154,SC2034
# The crash harness's view of RabbitMQ (tests/crash/harness.sh sources this
# after the fixture's env file; the interface is in that file's header).
#
# RabbitMQ 3.10 SIGKILLed within about 1.5 s of a durable queue's
# declaration can come back without the queue, and with it go the messages
# it had confirmed into it: mnesia logs the declaration's commit record, but
# its "committed" decision only later (docs/reliability.md,
# tests/crash/amqp-declare-kill.sh). Applications declare their queues ahead
# of traffic; so does the harness: every trial's queue before the first
# trial, then a clean restart (SIGTERM), after which each declaration is on
# disk (crash_prepare).
#   CRASH_AMQP_DECLARE  before (the default, as above) | relay (the relay
#                       declares each queue on its first send, a few hundred
#                       ms before the fault, as in the losing trial)
#   AMQP_DRAIN          brokers/amqp/tests/amqp-drain: reads a queue in well
#                       under a second; without it amqp-consume, which forks a
#                       command per message
adapter_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
declare_mode=${CRASH_AMQP_DECLARE:-before}

crash_url=$AMQP_URL
crash_sets=()
crash_tag="declare=$declare_mode"
# declared ahead, the queue is not declared again: if RabbitMQ ever lost it,
# publishes would come back unroutable, not fill a new one
[ "$declare_mode" = relay ] && crash_sets+=(--set amqp.declare_queue=true)

crash_prepare() { # topic...
  [ "$declare_mode" = before ] || return 0
  local q
  for q in "$@"; do
    amqp-declare-queue --url="$AMQP_URL" -q "$q" -d > /dev/null || fail "cannot declare queue $q"
  done
  bash "$adapter_dir/rabbitmq.sh" term "$RABBITMQ_FIXTURE_DIR"
  bash "$adapter_dir/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" > /dev/null
}

consumer_start() { :; } # declared ahead, or by the relay (amqp.declare_queue)

# The number of messages in queue $1, or "absent".
amqp_count() {
  if [ -n "${AMQP_DRAIN:-}" ]; then
    "$AMQP_DRAIN" --count "$AMQP_URL" "$1"
  else
    bash "$adapter_dir/rabbitmq.sh" queues "$RABBITMQ_FIXTURE_DIR" |
      awk -v q="$1" '$1 == q {print $2; found = 1} END {if (!found) print "absent"}'
  fi
}

# Prints the first word of every message received on topic, one per line.
consumer_collect() { # topic ledger_expanded
  local t=$1 count
  count=$(amqp_count "$t")
  # no queue (relay mode: nothing was ever sent): every ledger number then
  # counts as lost
  [ "$count" != absent ] && [ "$count" -gt 0 ] || return 0
  if [ -n "${AMQP_DRAIN:-}" ]; then
    timeout 300 "$AMQP_DRAIN" "$AMQP_URL" "$t" | awk '{print $1}'
  else
    timeout 300 amqp-consume --url="$AMQP_URL" -q "$t" -c "$count" cat | fold -w "$size" | awk '{print $1}'
  fi
}

broker_down() { bash "$adapter_dir/rabbitmq.sh" kill "$RABBITMQ_FIXTURE_DIR"; } # SIGKILL: a crash

# The publisher is held while RabbitMQ comes back, so that the queue is
# counted as the broker recovered it, before anything is resent. Nothing can
# be confirmed while the broker is down: the accepted messages no longer in
# the store were confirmed before the kill, and the recovered queue must
# hold at least that many (packed members acked only in the publisher's
# memory still count as stored: a lower bound).
broker_up() { # publisher pid, topic, trial
  kill -STOP "$1" 2>/dev/null || true
  local pending accepted_now
  pending=$("$cli" status --store "$store" --json | jq -r '.sending + .retrying')
  accepted_now=$(awk '{s += $2 - $1 + 1} END {print s + 0}' "$ledger")
  echo $((accepted_now - pending)) > "$work/confirmed-before-kill-$3"
  bash "$adapter_dir/rabbitmq.sh" restart "$RABBITMQ_FIXTURE_DIR" > /dev/null
  amqp_count "$2" > "$work/queue-after-restart-$3" 2>&1 || true
  kill -CONT "$1" 2>/dev/null || true
}

broker_evidence() { # topic
  cp "$RABBITMQ_FIXTURE_DIR"/log/*.log "$work/" 2>/dev/null || true
  grep -h "$1" "$RABBITMQ_FIXTURE_DIR"/log/*.log > "$work/broker-log-$1" 2>/dev/null || true
}
