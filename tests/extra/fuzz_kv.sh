#!/bin/sh
# Fuzzes the KV cache API (tests/fuzz_kv.c) for about 20 s from the committed
# corpus; new inputs and crash reproducers go to a temporary directory.
# Exits 77 (not run here, with the reason) when clang cannot link libFuzzer programs here.
CLANG=${CLANG:-clang}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$tmp/probe.c"
if ! "$CLANG" -fsanitize=fuzzer,address,undefined -o "$tmp/probe" "$tmp/probe.c" > /dev/null 2>&1; then
    echo "fuzz_kv: skipped (clang with libFuzzer is not available)"
    exit 77
fi
make -s build/fuzz/fuzz_kv CLANG="$CLANG" || exit 1
mkdir -p "$tmp/new"
./build/fuzz/fuzz_kv "$tmp/new" tests/fuzz_kv_corpus -max_total_time="${FUZZ_SECONDS:-20}" \
    -max_len=1024 -rss_limit_mb=2048 -artifact_prefix="$tmp/" -print_final_stats=1 > "$tmp/log" 2>&1
status=$?
tail -n 20 "$tmp/log"
if [ $status -ne 0 ]; then
    echo "fuzz_kv: FAILED; reproduce with ./build/fuzz/fuzz_kv <input>:"
    grep -E 'fuzz_kv:|ERROR|SUMMARY|Test unit written' "$tmp/log" | head -5
    mkdir -p build && cp "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-* build/ 2>/dev/null
fi
exit $status
