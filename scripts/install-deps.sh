#!/usr/bin/env bash
# Installs what ackbox needs to build, test and demo on Debian 12: compilers
# and test tools here, and what each plugin folder's packages.debian lists
# (its client library, the broker its tests start themselves, their tools).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config clang libcriterion-dev
      jq python3 gnuplot-nox valgrind
      prometheus libmicrohttpd-dev curl) # promtool checks the metrics text; relay --metrics-listen
# "build: pkg..." and "test: pkg..." lines of brokers/*/ and store/*/packages.debian
for f in brokers/*/packages.debian store/*/packages.debian; do
  [ -f "$f" ] || continue
  read -r -a more <<<"$(sed -n 's/^\(build\|test\):[[:space:]]*//p' "$f" | tr '\n' ' ')"
  PKGS+=("${more[@]}")
done

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
