#!/bin/sh
# ThreadSanitizer: builds tests/tsan/test_tsan.c with clang -fsanitize=thread
# (no OpenMP: libgomp is not TSan-clean) and runs it; any data race report,
# or a thread whose results differ from the single-threaded run, fails.
# Exits 77 (not run here, with the reason) when the TSan runtime cannot run here.
CLANG=${CLANG:-clang}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
printf '#include <pthread.h>\nstatic void *f(void *p) { return p; }\nint main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n' > "$tmp/probe.c"
if ! "$CLANG" -fsanitize=thread -pthread -o "$tmp/probe" "$tmp/probe.c" > "$tmp/probe.log" 2>&1 || ! "$tmp/probe" >> "$tmp/probe.log" 2>&1; then
    echo "tsan: skipped (no working ThreadSanitizer runtime for $CLANG):"
    head -3 "$tmp/probe.log"
    exit 77
fi
mkdir -p build/tsan
"$CLANG" -std=c99 -O1 -g -fsanitize=thread -pthread -Wall -Wextra -Wpedantic -Werror -Itests -I. \
    -o build/tsan/test_tsan tests/tsan/test_tsan.c -lm || exit 1
TSAN_OPTIONS="halt_on_error=1 exitcode=66 ${TSAN_OPTIONS:-}" ./build/tsan/test_tsan
