#!/usr/bin/env bash
# The demo: installs dependencies, builds, starts a private RabbitMQ on
# 127.0.0.1 (data in a temporary directory) and runs the order service
# against it, stopping and restarting the broker in the middle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" >/dev/null

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
echo "What RabbitMQ holds now (queue, messages):"
bash "$fixture" queues "$work/rabbit" | sed 's/^/  /'
