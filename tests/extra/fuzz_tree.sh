#!/bin/sh
# Fuzzes mlk_tree_mask / mlk_tree_depth / mlk_tree_accept for 20 seconds
# (libFuzzer with address and undefined-behaviour sanitizers).
set -e
make -s build/fuzz/fuzz_tree
mkdir -p build/fuzz/corpus_tree
./build/fuzz/fuzz_tree -max_total_time=20 -seed=1 -print_final_stats=1 build/fuzz/corpus_tree
