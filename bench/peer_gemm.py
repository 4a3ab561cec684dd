"""Peer for bench_gemm: torch.mm on the same shapes (NT is a @ b.t() with b
stored n x k; the m = 1 decode shapes report GB/s of B read). Debian's torch calls whatever libblas.so.3 the system's
alternatives select: OpenBLAS when libopenblas0 is installed, else the
netlib reference BLAS, which is ~30x slower; the script says which it got."""
import os

import torch

import peerlib


def blas_library():
    """The BLAS shared object this process has mapped (after a matmul)."""
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "blas" in os.path.basename(line.split()[-1])}
    return ", ".join(sorted(libs)) or "unknown"


peerlib.setup()
for n in (512, 1024, 2048):
    a = torch.rand(n, n) - 0.5
    b = torch.rand(n, n) - 0.5
    c = torch.empty(n, n)
    if n == 512:
        torch.mm(a, b, out=c)
        print("torch.mm BLAS: %s" % blas_library())
    shape = "%dx%dx%d" % (n, n, n)
    flops = 2.0 * n * n * n
    reps = 30 if n <= 512 else 15 if n <= 1024 else 7
    peerlib.record("sgemm_nn", shape, lambda: torch.mm(a, b, out=c), flops=flops, reps=reps)
    peerlib.record("sgemm_nt", shape, lambda: torch.mm(a, b.t(), out=c), flops=flops, reps=reps)
w = torch.rand(4096, 4096) - 0.5
for m in (16, 64, 128):
    x = torch.rand(m, 4096) - 0.5
    y = torch.empty(m, 4096)
    peerlib.record("sgemm_nt", "%dx4096x4096" % m, lambda: torch.mm(x, w.t(), out=y),
                   flops=2.0 * m * 4096 * 4096, reps=20)
for trans_b, n, k in ((0, 4096, 4096), (1, 4096, 4096), (1, 11008, 4096)):
    x = torch.rand(1, k) - 0.5
    w = torch.rand(n, k) - 0.5 if trans_b else torch.rand(k, n) - 0.5
    y = torch.empty(1, n)
    shape = "1x%dx%d" % (n, k)
    fn = (lambda: torch.mm(x, w.t(), out=y)) if trans_b else (lambda: torch.mm(x, w, out=y))
    peerlib.record("sgemm_nt" if trans_b else "sgemm_nn", shape, fn, nbytes=4.0 * n * k, reps=40)
