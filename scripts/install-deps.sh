#!/usr/bin/env bash
# Installs what ackbox needs to build, test and demo on Debian 12: compilers,
# client libraries, and the brokers the tests start themselves.
set -euo pipefail

PKGS=(build-essential cmake pkg-config clang
      libsqlite3-dev librabbitmq-dev librdkafka-dev libpaho-mqtt-dev libhiredis-dev libpq-dev
      libnats-dev
      libcriterion-dev
      rabbitmq-server mosquitto mosquitto-clients redis-server postgresql nats-server
      kcat amqp-tools sqlite3 jq python3 gnuplot-nox valgrind)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The brokers' packages try to start system services; the tests start their
# own on free ports, so a policy-rc.d keeps the packaged ones from starting.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
