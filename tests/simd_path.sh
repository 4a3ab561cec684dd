#!/bin/sh
# One x86 SIMD path of mlkern.h, whatever path -march=native picks on this
# machine: the test programs built for an x86-64 level (v3: AVX2 + FMA; v4
# plus VNNI: AVX-512) and run with small shapes (MLKT_QUICK). Exits 77 (not
# run here, with the reason) when this CPU cannot execute that level.
# Usage: tests/simd_path.sh avx2|avx512   (tests/extra/x86_*.sh)
case $1 in
    avx2) level=x86-64-v3; flags="avx2 fma" ;;
    avx512) level="x86-64-v4 -mavx512vnni"; flags="avx512f avx512dq avx512bw avx512vl avx512_vnni" ;;
    *) echo "usage: $0 avx2|avx512"; exit 2 ;;
esac
for f in $flags; do
    if ! grep -qw "$f" /proc/cpuinfo 2>/dev/null; then
        echo "the $1 path needs a CPU with $f (this one has none)"
        exit 77
    fi
done
mkdir -p "build/$1"
status=0
for t in test_gemm test_attn test_norm test_softmax test_kv test_decode test_safety test_ternary test_rope; do
    if ! ${CC:-cc} -std=c99 -O2 -march=$level -fopenmp -DMLKT_QUICK -Wall -Wextra -Wpedantic -Werror -Itests -I. \
            -o "build/$1/$t" "tests/$t.c" -lm; then
        echo "$1: $t does not build"; status=1; continue
    fi
    if OMP_NUM_THREADS=2 "build/$1/$t" > "build/$1/$t.log" 2>&1; then
        echo "$1: $(grep -E 'passed, [0-9]+ failed$' "build/$1/$t.log" | tail -n 1)"
    else
        echo "$1: $t FAILED:"; grep -E 'FAIL' "build/$1/$t.log" | head -10; status=1
    fi
done
exit $status
