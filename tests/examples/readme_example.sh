#!/usr/bin/env bash
# README.md's first C example ("Use it") compiles as written against the
# public headers, warnings as errors. Usage: readme_example.sh CC OUT.c
# (run from the source directory).
set -euo pipefail
cc=${1:?usage: readme_example.sh CC OUT.c}
out=${2:?usage: readme_example.sh CC OUT.c}
awk '/^```c$/ { n++; if (n == 1) { on = 1; next } } on && /^```$/ { exit } on' README.md > "$out"
[ -s "$out" ] || { echo "readme_example: no \`\`\`c block in README.md" >&2; exit 1; }
"$cc" -std=c11 -Wall -Wextra -Werror -fsyntax-only -Iinclude -x c "$out"
echo "readme_example: README.md's example compiles ($(wc -l < "$out") lines)"
