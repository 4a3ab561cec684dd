#!/bin/sh
# Builds and runs examples/mlp_sample.c: it exits non-zero when the top-k
# probabilities of its sgemm + layer norm + softmax head disagree with its
# naive double-precision computation.
set -e
make -s build/examples/mlp_sample
OMP_NUM_THREADS=2 ./build/examples/mlp_sample
