#!/bin/sh
# Short run of examples/ternary_train.c (make check): trains the fp32 and the
# ternary BitLinear MLP on spirals and fails if the ternary model's held-out
# accuracy is more than 3 points below the fp32 one. One thread: the result
# is the same for any thread count, and a busy machine runs it faster so.
set -eu
make=${MAKE:-make}
$make -s build/examples/ternary_train
OMP_NUM_THREADS=1 ./build/examples/ternary_train --quick
test -s build/ternary_loss.csv
