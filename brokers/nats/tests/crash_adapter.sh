# shellcheck shell=bash disable=SC2154,SC2034
# The crash harness's view of nats-server with JetStream (tests/crash/harness.sh
# sources this after the fixture's env file; the interface is in that file's
# header). The consumer is nats-stream-dump, built in this folder
# (NATS_STREAM_DUMP, set by tests/CMakeLists.txt here).
adapter_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

crash_url=$NATS_URL
crash_sets=()
dump=${NATS_STREAM_DUMP:?the NATS crash adapter needs NATS_STREAM_DUMP}
# JetStream drops a resend whose Nats-Msg-Id it holds (within the stream's
# duplicate window, 2 minutes): no duplicate may be left in the stream
crash_no_duplicates=1

consumer_start() { # topic
  # the relay makes the trial's stream (file storage, duplicate window 2 min);
  # log.level info: at close it says how many resends the stream dropped
  trial_sets=(--set "nats.stream=S_$1" --set "nats.stream_subjects=$1" --set log.level=info)
}

# Prints the first word of every message the trial's stream holds, one per line.
consumer_collect() { # topic ledger_expanded
  # no stream: nothing was ever sent (the relay creates it at connect); every
  # ledger number then counts as lost
  timeout 120 "$dump" "$NATS_URL" "S_$1" 2>/dev/null | awk '{print $1}' || true
}

# The resends the stream recognised by Nats-Msg-Id and dropped (the relay's log).
trial_note() { # trial
  local dropped
  dropped=$({ cat "$work/relay-$1.err" "$work/publish-$1.err" 2>/dev/null || true; } |
            { grep -o "recognised [0-9]* resends" || true; } | awk '{s += $2} END {print s + 0}')
  echo " dropped_by_stream=$dropped"
}

# SIGKILL: JetStream writes a message before its PubAck (docs/brokers/nats.md)
broker_down() { bash "$adapter_dir/nats-server.sh" kill "$NATS_FIXTURE_DIR"; }
broker_up() { bash "$adapter_dir/nats-server.sh" restart "$NATS_FIXTURE_DIR" >/dev/null; }
