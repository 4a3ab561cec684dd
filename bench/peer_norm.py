"""PyTorch peer of bench/bench_norm.c: torch.nn.functional.layer_norm forward,
and forward + autograd backward (dx, dgamma, dbeta), with the same byte counts."""
import torch
import torch.nn.functional as F

from peerlib import record, setup

setup()
for rows, dim in ((8192, 768), (32768, 1024)):
    shape = "%dx%d" % (rows, dim)
    x = torch.randn(rows, dim) * 2
    dy = torch.randn(rows, dim)
    w = torch.rand(dim) + 0.5
    b = torch.randn(dim)
    act = 4.0 * rows * dim
    par = 4.0 * (2 * dim + 2 * rows)
    fwd_bytes = 2 * act + par
    bwd_bytes = 3 * act + 2 * par
    with torch.no_grad():
        record("layernorm_fwd", shape, lambda: F.layer_norm(x, (dim,), w, b, 1e-5), nbytes=fwd_bytes)
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = wg.grad = bg.grad = None
        F.layer_norm(xg, (dim,), wg, bg, 1e-5).backward(dy)

    record("layernorm_fwd_bwd", shape, fwd_bwd, nbytes=fwd_bytes + bwd_bytes)
