"""Peer for bench_kv.c: decode attention in torch over a contiguous float32
cache of the same shape (torch has no paged or quantised cache). Each kv
head's 4 query heads are one [4, D] matrix, so nothing is repeated:
softmax(q k^T / sqrt(D)) v as two batched matmuls. GB/s counts the cache
bytes read, as bench_kv.c does."""
import math

import torch

import peerlib

SEQS, LEN, HQ, HKV, D = 32, 4096, 32, 8, 128


def decode(q, k, v):
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def main():
    peerlib.setup()
    q = torch.randn(SEQS, HKV, HQ // HKV, D)
    k = torch.randn(SEQS, HKV, LEN, D)
    v = torch.randn(SEQS, HKV, LEN, D)
    nbytes = 2 * SEQS * HKV * LEN * D * 4
    with torch.no_grad():
        peerlib.record("kv_decode_attn", "F32 %dx%d Hq%d Hkv%d D%d" % (SEQS, LEN, HQ, HKV, D),
                       lambda: decode(q, k, v), nbytes=nbytes, reps=9)
    del q, k, v
    # split-KV decode: one sequence of 32768 positions (bench_kv.c reads F16; torch fp32)
    q = torch.randn(1, HKV, HQ // HKV, D)
    k = torch.randn(1, HKV, 32768, D)
    v = torch.randn(1, HKV, 32768, D)
    with torch.no_grad():
        peerlib.record("kv_decode_split", "F16 1x32768 Hq%d Hkv%d D%d" % (HQ, HKV, D),
                       lambda: decode(q, k, v), nbytes=2 * HKV * 32768 * D * 2, reps=15)
    del q, k, v
    # cascade: 32 forks of a 4096-token prompt, 128 own tokens each; torch
    # attends each sequence's contiguous 4224 keys (no shared-prefix kernel)
    q = torch.randn(SEQS, HKV, HQ // HKV, D)
    k = torch.randn(SEQS, HKV, 4096 + 128, D)
    v = torch.randn(SEQS, HKV, 4096 + 128, D)
    with torch.no_grad():
        peerlib.record("kv_decode_cascade", "F16 %dx(4096 shared + 128) Hq%d Hkv%d D%d" % (SEQS, HQ, HKV, D),
                       lambda: decode(q, k, v), reps=9)


if __name__ == "__main__":
    main()
