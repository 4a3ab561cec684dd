"""PyTorch peer of bench/bench_softmax.c: torch.topk(torch.softmax(x, -1), 50),
in GB/s of logits read."""
import torch

from peerlib import record, setup

setup()
for rows, n in ((64, 32000), (64, 128256), (8, 262144)):
    x = torch.randn(rows, n) * 3
    with torch.no_grad():
        record("topk_softmax_k50", "%dx%d" % (rows, n), lambda: torch.topk(torch.softmax(x, -1), 50),
               nbytes=4.0 * rows * n)
