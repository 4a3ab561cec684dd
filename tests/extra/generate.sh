#!/bin/sh
# Runs examples/generate: it exits non-zero when speculative decoding differs
# from greedy decoding, chunked prefill from full prefill, or beam search fails.
set -e
make -s build/examples/generate
./build/examples/generate 1
./build/examples/generate 7
