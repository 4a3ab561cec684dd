#!/bin/sh
# The NEON (aarch64) paths: the test programs cross-compiled with Debian's
# aarch64 gcc and run under qemu-user, small shapes (MLKT_QUICK). This checks
# correctness only; an emulator says nothing about speed. Exits 77 (not run
# here, with the reason) when the cross compiler or qemu is missing.
CC_ARM=${CC_ARM:-aarch64-linux-gnu-gcc}
if ! command -v "$CC_ARM" > /dev/null 2>&1 || ! command -v qemu-aarch64 > /dev/null 2>&1; then
    echo "the NEON paths need $CC_ARM and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)"
    exit 77
fi
mkdir -p build/neon
status=0
for t in test_common test_gemm test_attn test_norm test_softmax test_kv test_decode test_safety test_sampling \
         test_rope test_ternary test_tree test_beam; do
    [ -f "tests/$t.c" ] || continue
    if ! "$CC_ARM" -std=c99 -O2 -static -DMLKT_QUICK -Wall -Wextra -Wpedantic -Werror -Itests -I. \
            -o "build/neon/$t" "tests/$t.c" -lm; then
        echo "neon: $t does not build for aarch64"; status=1; continue
    fi
    if qemu-aarch64 "build/neon/$t" > "build/neon/$t.log" 2>&1; then
        echo "neon: $(grep -E 'passed, [0-9]+ failed$' "build/neon/$t.log" | tail -n 1)"
    else
        echo "neon: $t FAILED under qemu-aarch64:"; grep -E 'FAIL' "build/neon/$t.log" | head -10; status=1
    fi
done
exit $status
