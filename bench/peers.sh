#!/bin/sh
# make bench-peers: times the same shapes with PyTorch (Debian's python3-torch,
# installed when missing) right after `make bench`, then prints mlkern/torch
# ratios. torch runs twice, plain and with glibc's malloc told to keep big
# buffers, which torch benefits from; then the mlkern program of the same
# kernels runs again. Each side counts its faster run, so both get two
# chances at a quiet moment of a noisy machine, interleaved with the other.
set -e
PY=/usr/bin/python3
if ! $PY -c 'import torch, numpy' 2>/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch python3-numpy libopenblas0-pthread
fi
# Debian's torch takes BLAS from the libblas.so.3 alternative: without
# OpenBLAS it gets the netlib reference BLAS (under 1 GFLOP/s), no fair peer.
if ! update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep -q '^Value:.*openblas'; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread
fi
threads=${OMP_NUM_THREADS:-2}
for p in bench/peer_*.py; do
    [ -f "$p" ] || continue
    echo "== $p (torch, $threads threads, plain malloc)"
    MLK_PEER_VARIANT=plain $PY "$p" "$threads"
    echo "== $p (torch, $threads threads, malloc kept)"
    MLK_PEER_VARIANT=malloc MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        MALLOC_TOP_PAD_=1073741824 $PY "$p" "$threads"
    b=build/bench/bench_$(basename "$p" .py | sed 's/^peer_//')
    if [ -x "$b" ]; then
        echo "== $b (mlkern, $threads threads, second run)"
        OMP_NUM_THREADS=$threads "./$b"
    fi
done
$PY bench/compare.py build/bench.csv
