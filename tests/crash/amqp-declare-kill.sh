#!/usr/bin/env bash
# The reproducer of the AMQP outage loss (docs/reliability.md), rabbitmq-c
# alone: declare a durable queue, publish persistent messages with confirms,
# SIGKILL RabbitMQ DELAY ms after the chosen number were confirmed, restart
# it, and count what the queue kept.
#
#   amqp-declare-kill.sh FIXTURE_ENV DECLARE_KILL DRAIN [CYCLES] [DELAYS] [PAUSES]
#     FIXTURE_ENV   env file of a brokers/amqp/tests/rabbitmq.sh broker (it is
#                   killed and restarted)
#     DECLARE_KILL  brokers/amqp/tests/amqp-declare-kill; DRAIN brokers/amqp/tests/amqp-drain
#     CYCLES        how many (default 20); DELAYS, ms after the confirms,
#                   taken in turn (default "0 200 1000 3000"); PAUSES, seconds
#                   between a restart and the next declare, taken in turn
#                   (default "0 3": the crash harness declares a few seconds
#                   after the broker came back)
# One line per cycle: the queue, when it was declared, how many messages
# RabbitMQ had confirmed when the kill was sent, how many the queue held after
# the restart ("absent": no queue), and whether the queue's name was in
# mnesia's files on disk after the kill (the definition written out) or not.
# Exit 1 if any cycle lost confirmed messages (the point is to show it).
# QUEUE_TYPE=quorum declares quorum queues (see brokers/amqp/tests/amqp-declare-kill.c).
set -euo pipefail
envfile=${1:?fixture env} tool=${2:?amqp-declare-kill} drain=${3:?amqp-drain}
cycles=${4:-20}
read -r -a delays <<< "${5:-0 200 1000 3000}"
read -r -a pauses <<< "${6:-0 3}"
here=$(cd "$(dirname "$0")" && pwd)
fixture=$here/../../brokers/amqp/tests/rabbitmq.sh
# shellcheck disable=SC1090
. "$envfile"
mnesia=$RABBITMQ_FIXTURE_DIR/mnesia/$RABBITMQ_NODENAME
n=2000
losses=0
for i in $(seq 1 "$cycles"); do
  q=declare_kill_$$_$i
  delay=${delays[$(( (i - 1) % ${#delays[@]} ))]}
  pause=${pauses[$(( (i - 1) % ${#pauses[@]} ))]}
  sleep "$pause" # the broker's age at the declare is what this varies
  kill_after=$(( 1 + RANDOM % n ))
  pid=$(cat "$RABBITMQ_FIXTURE_DIR/pid")
  out=$("$tool" "$AMQP_URL" "$q" "$n" "$kill_after" "$pid" "$delay")
  # wait (bounded) for the broker to be gone: the tool sent the SIGKILL
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  ! kill -0 "$pid" 2>/dev/null || { echo "broker $pid survived SIGKILL" >&2; exit 1; }
  rm -f "$RABBITMQ_FIXTURE_DIR/pid"
  on_disk=$(grep -lF "$q" "$mnesia"/*.LOG "$mnesia"/rabbit_durable_queue.* 2>/dev/null | xargs -r -n1 basename | tr '\n' ',' || true)
  # KEEP_MNESIA=DIR: a copy of mnesia's files as the kill left them, per cycle
  # (tests/crash/mnesia-decisions.escript reads its transaction log)
  [ -z "${KEEP_MNESIA:-}" ] || cp -r "$mnesia" "$KEEP_MNESIA/cycle-$i"
  bash "$fixture" restart "$RABBITMQ_FIXTURE_DIR" > /dev/null
  after=$("$drain" --count "$AMQP_URL" "$q")
  confirmed=$(sed -n 's/.*confirmed=\([0-9]*\).*/\1/p' <<<"$out")
  verdict=kept
  if [ "$after" = absent ] || [ "$after" -lt "$confirmed" ]; then
    verdict=LOST
    losses=$((losses + 1))
  fi
  echo "cycle=$i queue=$q pause_s=$pause delay_ms=$delay $out after_restart=$after name_on_disk=${on_disk:-none} $verdict"
done
echo "cycles=$cycles lost_queues=$losses"
[ "$losses" -eq 0 ]
