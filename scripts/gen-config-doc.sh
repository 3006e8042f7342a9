#!/usr/bin/env bash
# Regenerates docs/configuration.md from the property tables compiled into a
# build (core and every built plugin): the tables are the single source.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/gen.c" <<'C'
#include <stdio.h>
#include <ackbox/ackbox.h>
int main(void) { ackbox_conf_dump_properties(stdout); return 0; }
C
cc -Iinclude "$tmp/gen.c" -L"$BUILD_DIR" -lackbox -Wl,-rpath,"$(cd "$BUILD_DIR" && pwd)" -o "$tmp/gen"
{
  echo "# Configuration"
  echo
  echo "Every key \`ackbox_conf_set()\` accepts, generated from the property tables by"
  echo "\`scripts/gen-config-doc.sh\`. Durations take \`ms\`, \`s\`, \`m\`, \`h\` suffixes (plain numbers are"
  echo "milliseconds). Plugin keys start with the plugin's scheme; a key of a plugin that is not built is"
  echo "refused with ACKBOX_ERR_NOT_BUILT, any other unknown key with ACKBOX_ERR_UNKNOWN_KEY."
  echo 'Exception: every `kafka.<property>` is passed to librdkafka unchanged and checked by it when the'
  echo 'handle opens; the `kafka.*` rows below are only the ones ackbox sets a default for'
  echo '([docs/brokers/kafka.md](brokers/kafka.md)).'
  echo
  "$tmp/gen"
} > docs/configuration.md
echo "wrote docs/configuration.md"
