"""PyTorch peer of bench/bench_rope.c: HF transformers' apply_rotary_pos_emb
(x * cos + rotate_half(x) * sin, NeoX) and its GPT-J form (rotate_every_two,
cos/sin repeated per pair) on x [4096, 32, 128], with the same byte count.
cos/sin are computed once outside the timed call (as HF shares them across
layers), so torch is timed on the rotation alone; mlkern's figure includes
its cos/sin."""
import torch

from peerlib import record, setup

setup()
rows, heads, dim = 4096, 32, 128
shape = "%dx%dx%d" % (rows, heads, dim)
x = torch.randn(rows, heads, dim)
pos = torch.arange(rows, dtype=torch.float32)
inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
freqs = torch.outer(pos, inv_freq)                      # [rows, dim / 2]
nbytes = 2 * 4.0 * rows * heads * dim + 4.0 * rows      # x in and out, positions in


def rotate_half(t):
    t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
    return torch.cat((-t2, t1), dim=-1)


def rotate_every_two(t):
    t1, t2 = t[..., ::2], t[..., 1::2]
    return torch.stack((-t2, t1), dim=-1).flatten(-2)


emb = torch.cat((freqs, freqs), dim=-1)
cos_neox, sin_neox = emb.cos()[:, None, :], emb.sin()[:, None, :]
cos_gptj = freqs.cos().repeat_interleave(2, dim=-1)[:, None, :]
sin_gptj = freqs.sin().repeat_interleave(2, dim=-1)[:, None, :]
with torch.no_grad():
    record("rope_fwd_neox", shape, lambda: x * cos_neox + rotate_half(x) * sin_neox, nbytes=nbytes)
    record("rope_fwd_gptj", shape, lambda: x * cos_gptj + rotate_every_two(x) * sin_gptj, nbytes=nbytes)
