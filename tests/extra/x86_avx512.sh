#!/bin/sh
# The AVX-512 path (tests/simd_path.sh); not run here on CPUs without AVX-512.
exec sh tests/simd_path.sh avx512
