#!/bin/sh
# Fuzzes mlk_tree_mask / mlk_tree_depth / mlk_tree_accept (tests/fuzz_tree.c)
# for FUZZ_SECONDS (default 5) with the shared runner, which exits 77 (not
# run here) when clang cannot link libFuzzer programs.
exec sh tests/fuzz_run.sh fuzz_tree
