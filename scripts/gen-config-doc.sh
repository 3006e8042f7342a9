#!/usr/bin/env bash
# Regenerates docs/configuration.md from the property tables compiled into a
# build (core and every built plugin): the tables are the single source. A
# plugin folder may add a note (its config-note.md) under the introduction.
# The build must contain every plugin folder, or the page would lose its keys.
#   BUILD_DIR (default build): a configured and built tree
#   OUT (default docs/configuration.md): where to write
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${OUT:-docs/configuration.md}
manifest=$BUILD_DIR/ackbox-plugins.txt
[ -f "$manifest" ] || { echo "gen-config-doc: $manifest missing: configure $BUILD_DIR first" >&2; exit 1; }
missing=""
for f in brokers/*/CMakeLists.txt store/*/CMakeLists.txt; do
  dir=${f%/CMakeLists.txt}
  # manifest lines: <name> <kind> <built> <folder> <scheme>...
  awk -v d="$dir" '$4 == d && $3 == "ON" {found = 1} END {exit !found}' "$manifest" ||
    missing+=" $dir"
done
if [ -n "$missing" ]; then
  echo "gen-config-doc: $BUILD_DIR does not build$missing; its keys would be missing." >&2
  echo "gen-config-doc: install what their packages.debian lists and reconfigure." >&2
  exit 1
fi
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
  for note in brokers/*/config-note.md store/*/config-note.md; do
    [ -f "$note" ] && cat "$note"
  done
  echo
  # test-only plugins (loopback://) are not for users: their keys stay out
  skip=$(tr '\n' ' ' < "$BUILD_DIR/ackbox-test-only.txt" 2>/dev/null || true)
  "$tmp/gen" | awk -v skip="$skip" '
    BEGIN { n = split(skip, s, " ") }
    { for (i = 1; i <= n; i++) if (index($0, "| `" s[i] ".") == 1) next; print }'
} > "$OUT"
echo "wrote $OUT"
