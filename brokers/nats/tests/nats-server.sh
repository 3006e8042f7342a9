#!/usr/bin/env bash
# Test fixture: a private nats-server with JetStream on 127.0.0.1 and a free
# port, its file store in DIR. Verbs:
#   start DIR     write the config, start, wait until the port accepts; write DIR/env
#   stop DIR      stop by PID and remove DIR
#   term DIR      SIGTERM (the server flushes its file store), keep DIR
#   kill DIR      SIGKILL, keep DIR (what was written reaches the page cache
#                 before the PubAck, so a process crash loses nothing acked)
#   restart DIR   start again on the same port with the same data
# The env file: NATS_PORT, NATS_URL, NATS_MAX_PAYLOAD, NATS_FIXTURE_DIR.
set -euo pipefail
usage="usage: nats-server.sh start|stop|term|kill|restart DIR"
verb=${1:?$usage}
dir=${2:?$usage}
die() { echo "nats fixture: $*" >&2; [ -f "$dir/log" ] && tail -20 "$dir/log" >&2; exit 1; }
# shellcheck source=tests/fixtures/lib.sh
. "$(dirname "$0")/../../../tests/fixtures/lib.sh"
bin=$(command -v nats-server || echo /usr/sbin/nats-server)
max_payload=1048576

launch() {
  # shellcheck disable=SC1091
  . "$dir/env"
  [ -x "$bin" ] || die "nats-server is not installed (apt-get install nats-server)"
  setsid "$bin" -c "$dir/nats.conf" >>"$dir/log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  local deadline=$((SECONDS + 30))
  # the port opens once JetStream has recovered its streams
  until port_open "$NATS_PORT"; do
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || die "nats-server exited"
    [ $SECONDS -lt $deadline ] || die "port $NATS_PORT did not open within 30 s"
    sleep 0.05
  done
}

case "$verb" in
start)
  rm -rf "$dir"; mkdir -p "$dir/js"
  port=$(free_port)
  printf 'NATS_PORT=%s\nNATS_URL=nats://127.0.0.1:%s\nNATS_MAX_PAYLOAD=%s\nNATS_FIXTURE_DIR=%s\n' \
    "$port" "$port" "$max_payload" "$dir" > "$dir/env"
  cat > "$dir/nats.conf" <<CONF
listen: 127.0.0.1:$port
server_name: ackbox-test-$port
max_payload: $max_payload
jetstream {
  store_dir: "$dir/js"
  max_memory_store: 64MB
  max_file_store: 1GB
}
CONF
  launch
  echo "nats fixture: up at 127.0.0.1:$port (pid $(cat "$dir/pid"))"
  ;;
restart) launch ;;
term) stop_pid TERM ;;
kill) stop_pid KILL ;;
stop) stop_pid TERM; rm -rf "$dir" ;;
*) die "unknown verb $verb" ;;
esac
