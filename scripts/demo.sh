#!/usr/bin/env bash
# The demo: installs dependencies, builds, starts a private RabbitMQ on
# 127.0.0.1 (data in a temporary directory) and runs the order service
# against it, stopping and restarting the broker in the middle; then kills
# the order service between a confirm and its delete, so messages go out
# twice, and lets the order consumer ship every order exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" >/dev/null
# A second, test-only copy of the library and the order service with crash
# points (ACKBOX_CRASH_POINTS, see tests/crash/): SQLite and AMQP only.
cmake -S . -B "$BUILD_DIR-crashpoints" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DACKBOX_CRASH_POINTS=ON \
      -DACKBOX_BUILD_TESTS=OFF -DACKBOX_WITH_KAFKA=OFF -DACKBOX_WITH_MQTT=OFF \
      -DACKBOX_WITH_REDIS=OFF -DACKBOX_WITH_POSTGRES=OFF >/dev/null
cmake --build "$BUILD_DIR-crashpoints" --target order_service -j"$(nproc)" >/dev/null

work=$(mktemp -d /tmp/ackbox-demo.XXXXXX)
fixture="$PWD/brokers/amqp/tests/rabbitmq.sh"
cleanup() { bash "$fixture" stop "$work/rabbit" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "Starting a private RabbitMQ on 127.0.0.1 (data in $work) ..."
bash "$fixture" start "$work/rabbit" >/dev/null
# shellcheck disable=SC1091
. "$work/rabbit/env"
echo "RabbitMQ is up at ${AMQP_URL}; the operator has declared the durable queue 'orders'."
amqp-declare-queue --url="${AMQP_URL}" --queue=orders --durable >/dev/null
echo

# The order service calls back here to stop/start the broker and to fix the
# unroutable topic, so the whole story runs in one go.
cat > "$work/ctl" <<CTL
#!/usr/bin/env bash
case "\$1" in
  stop)  bash "$fixture" kill "$work/rabbit" >/dev/null ;;
  start) bash "$fixture" restart "$work/rabbit" >/dev/null ;;
  fix)   amqp-declare-queue --url="${AMQP_URL}" --queue="\$2" --durable >/dev/null ;;
esac
CTL
chmod +x "$work/ctl"
"$BUILD_DIR/examples/order_service/order_service" --db "$work/orders.db" \
    --transport "${AMQP_URL}" --broker-ctl "$work/ctl"

echo
echo "6. The order service crashes after the broker confirmed a message, before the delete"
echo "   (crash point after_confirm of the crash-point build: it dies at once, as kill -9)."
rc=0
ACKBOX_CRASH_AT=after_confirm "$BUILD_DIR-crashpoints/examples/order_service/order_service" \
    --db "$work/orders.db" --transport "${AMQP_URL}" --orders 5 2>&1 | sed 's/^/  /' || rc=$?
[ "$rc" = 137 ] || { echo "demo: the order service did not die at the crash point (exit $rc)" >&2; exit 1; }
echo "  the order service died; all 5 messages are still in its outbox. It restarts and sends"
echo "  them again, though RabbitMQ already holds them:"
"$BUILD_DIR/examples/order_service/order_service" --db "$work/orders.db" \
    --transport "${AMQP_URL}" --orders 0 | sed 's/^/  /'
echo "  RabbitMQ now holds (queue, messages):"
bash "$fixture" queues "$work/rabbit" | sed 's/^/    /'

echo
echo "7. The order consumer ships each order once: the inbox records each message id in the"
echo "   same transaction as the shipment, and skips a message it has seen."
"$BUILD_DIR/examples/order_consumer/order_consumer" --transport "${AMQP_URL}" \
    --db "$work/shipping.db" --topic orders --drain | sed 's/^/  /'
