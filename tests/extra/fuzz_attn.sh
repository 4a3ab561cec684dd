#!/bin/sh
# Fuzzes tests/fuzz_attn.c for FUZZ_SECONDS (default 5) from tests/fuzz_attn_corpus.
exec sh tests/fuzz_run.sh fuzz_attn
