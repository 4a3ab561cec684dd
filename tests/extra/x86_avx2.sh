#!/bin/sh
# The AVX2 + FMA path (tests/simd_path.sh), also on machines whose native path is AVX-512.
exec sh tests/simd_path.sh avx2
