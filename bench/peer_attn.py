"""Peer for bench_attn.c: the plain matmul-softmax-matmul expression in torch
(1.13 has no scaled_dot_product_attention), bottom-right causal mask as
mlkern's, autograd for the backward. Same kernel and shape strings."""
import math

import torch

import peerlib

CASES = [  # batch, heads, kv_heads, len_q, len_kv, head_dim, causal
    (1, 8, 8, 1024, 1024, 64, True),
    (1, 8, 8, 4096, 4096, 64, True),
    (2, 8, 8, 4096, 4096, 64, True),
    (1, 8, 8, 1024, 1024, 128, False),
    (1, 32, 8, 1, 4096, 128, False),
]


def attention(q, k, v, causal, group):
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        nq, nkv = q.shape[-2], k.shape[-2]
        mask = torch.ones(nq, nkv, dtype=torch.bool).tril(diagonal=nkv - nq)
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def main():
    peerlib.setup()
    for b, h, hkv, nq, nkv, dim, causal in CASES:
        if nq == 1:
            shape = "B%d Hq%d Hkv%d Nq1 Nkv%d D%d" % (b, h, hkv, nkv, dim)
        else:
            shape = "B%d H%d N%d D%d %s" % (b, h, nq, dim, "causal" if causal else "full")
        flops = 4.0 * b * h * nq * nkv * dim * (0.5 if causal else 1.0)
        q = torch.randn(b, h, nq, dim, requires_grad=True)
        k = torch.randn(b, hkv, nkv, dim, requires_grad=True)
        v = torch.randn(b, hkv, nkv, dim, requires_grad=True)
        dout = torch.randn(b, h, nq, dim)
        with torch.no_grad():
            peerlib.record("attn_fwd", shape, lambda: attention(q, k, v, causal, h // hkv), flops=flops, reps=5)

        # backward alone: the graph is built once and kept (retain_graph)
        y = attention(q, k, v, causal, h // hkv)

        def bwd():
            q.grad = k.grad = v.grad = None
            y.backward(dout, retain_graph=True)

        peerlib.record("attn_bwd", shape, bwd, flops=2.5 * flops, reps=5)
        del y

if __name__ == "__main__":
    main()
