#!/bin/sh
# Fuzzes tests/fuzz_spec.c for FUZZ_SECONDS (default 5) from tests/fuzz_spec_corpus.
exec sh tests/fuzz_run.sh fuzz_spec
