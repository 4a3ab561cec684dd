"""Peer for bench_gemm: torch.mm (OpenBLAS in Debian's torch) on the same
shapes; NT is a @ b.t() with b stored n x k."""
import torch

import peerlib

peerlib.setup()
for n in (512, 1024, 2048):
    a = torch.rand(n, n) - 0.5
    b = torch.rand(n, n) - 0.5
    c = torch.empty(n, n)
    shape = "%dx%dx%d" % (n, n, n)
    flops = 2.0 * n * n * n
    reps = 30 if n <= 512 else 15 if n <= 1024 else 7
    peerlib.record("sgemm_nn", shape, lambda: torch.mm(a, b, out=c), flops=flops, reps=reps)
    peerlib.record("sgemm_nt", shape, lambda: torch.mm(a, b.t(), out=c), flops=flops, reps=reps)
