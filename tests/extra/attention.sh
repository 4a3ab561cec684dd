#!/bin/sh
# Runs examples/attention: it exits non-zero when its causal GQA forward or
# backward disagrees with the naive double-precision reference.
set -e
make -s build/examples/attention
./build/examples/attention
