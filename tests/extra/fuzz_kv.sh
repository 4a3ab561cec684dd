#!/bin/sh
# Fuzzes the KV cache API (tests/fuzz_kv.c) against a model of it for about
# 20 s from its committed corpus, through the shared runner (which exits 77,
# not run here, when clang cannot link libFuzzer programs).
FUZZ_SECONDS=${FUZZ_SECONDS:-20} FUZZ_MAX_LEN=1024 exec sh tests/fuzz_run.sh fuzz_kv
