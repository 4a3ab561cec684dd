"""Peer for bench_ternary: torch has no ternary kernel, so a layer's
y = x W^T runs as torch's fp32 linear on the same shapes. Each timing is
recorded twice: as fp32_linear (against mlk_sgemm) and under the ternary
kernel's name (what switching a layer to mlkern's packed ternary buys)."""
import torch

import peerlib

peerlib.setup()
for m, n, k in ((1, 4096, 4096), (1, 11008, 4096), (64, 4096, 4096), (64, 11008, 4096)):
    x = torch.rand(m, k) - 0.5
    w = torch.rand(n, k) - 0.5
    shape = "%dx%dx%d" % (m, n, k)
    run = lambda: torch.nn.functional.linear(x, w)  # x @ w.T through BLAS sgemm (NT)
    reps = 20 if m == 1 else 7
    if m == 1:  # weight bytes read per second, as the C bench reports
        peerlib.record("fp32_linear", shape, run, nbytes=4.0 * n * k, reps=reps)
        peerlib.record("ternary_gemv", shape, run, nbytes=4.0 * n * k, reps=reps)
    else:
        peerlib.record("fp32_linear", shape, run, flops=2.0 * m * n * k, reps=reps)
        peerlib.record("ternary_gemm", shape, run, flops=2.0 * m * n * k, reps=reps)
