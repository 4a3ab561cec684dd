#!/bin/sh
# Fuzzes tests/fuzz_beam.c for FUZZ_SECONDS (default 5) from tests/fuzz_beam_corpus.
exec sh tests/fuzz_run.sh fuzz_beam
