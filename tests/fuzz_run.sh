#!/bin/sh
# Runs one libFuzzer target tests/<name>.c for FUZZ_SECONDS (default 5)
# from its committed corpus tests/<name>_corpus; new inputs and crash
# reproducers go to a temporary directory (a crash is copied to build/).
# Exits 77 (not run here, with the reason) when clang cannot link libFuzzer here.
# Usage: sh tests/fuzz_run.sh <name>   (tests/extra/fuzz_*.sh call it)
name=$1
CLANG=${CLANG:-clang}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$tmp/probe.c"
if ! "$CLANG" -fsanitize=fuzzer,address,undefined -o "$tmp/probe" "$tmp/probe.c" > /dev/null 2>&1; then
    echo "$name: skipped (clang with libFuzzer is not available)"
    exit 77
fi
make -s "build/fuzz/$name" CLANG="$CLANG" || exit 1
mkdir -p "$tmp/new"
# undefined behaviour stops the run too, so its input is saved as a crash
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "./build/fuzz/$name" "$tmp/new" "tests/${name}_corpus" -max_total_time="${FUZZ_SECONDS:-5}" \
    -max_len="${FUZZ_MAX_LEN:-512}" -rss_limit_mb=2048 -artifact_prefix="$tmp/" -print_final_stats=1 > "$tmp/log" 2>&1
status=$?
tail -n 12 "$tmp/log"
if [ $status -ne 0 ]; then
    echo "$name: FAILED; reproduce with ./build/fuzz/$name <input>:"
    grep -E "$name:|ERROR|SUMMARY|Test unit written" "$tmp/log" | head -5
    mkdir -p build && cp "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-* build/ 2>/dev/null
fi
exit $status
