#!/bin/sh
# Fuzzes tests/fuzz_sample.c for FUZZ_SECONDS (default 5) from tests/fuzz_sample_corpus.
exec sh tests/fuzz_run.sh fuzz_sample
