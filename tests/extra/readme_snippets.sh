#!/bin/sh
# Compiles every ```c block of README.md as written, so the README's code
# stays in step with the header: a block with a main() is compiled and
# linked as a program (the first program; tests/extra/consumers.sh runs it),
# any other block is compiled as a translation unit after the standard
# headers and mlkern.h. gcc -std=c99 -O2 -Wall -Wextra -Werror (CC overrides).
set -eu
cc=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
awk -v dir="$tmp" '
    /^```c[ \t]*$/ { on = 1; n++; f = sprintf("%s/snippet%02d.c", dir, n); printf "" > f; next }
    /^```/ { if (on) close(f); on = 0; next }
    on { print >> f }
' README.md
count=0
for f in "$tmp"/snippet*.c; do
    [ -f "$f" ] || { echo "readme_snippets: no C snippets in README.md"; exit 1; }
    count=$((count + 1))
    if grep -q 'int main(' "$f"; then
        src=$f
        out="-o $f.bin"
        link=-lm
    else
        src=$f.tu.c
        { printf '#include <math.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
          printf '#include "mlkern.h"\n#line 1 "README.md snippet %d"\n' "$count"
          cat "$f"; } > "$src"
        out="-c -o $f.o"
        link=
    fi
    # shellcheck disable=SC2086
    if ! $cc -std=c99 -O2 -Wall -Wextra -Werror -I. $out "$src" $link 2> "$tmp/err"; then
        echo "readme_snippets: snippet $count of README.md does not compile:"
        sed 's/^/    /' "$f" | head -40
        cat "$tmp/err"
        exit 1
    fi
    echo "snippet $count: ok ($(head -n 1 "$f" | cut -c1-70))"
done
echo "readme_snippets: all $count C snippets of README.md compile"
