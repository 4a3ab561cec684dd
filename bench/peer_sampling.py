"""PyTorch peer of the sampling row of bench/bench_softmax.c: one batched
step over 64 x 128256 logits with the same mixed per-row parameters, done
the way HF/vLLM-style torch samplers do it: bias, penalties by gather and
scatter, temperature, top-k by torch.topk, top-p by sort and cumsum, min-p,
softmax, multinomial and the sampled token's logprob, in rows per ms."""
import torch

from peerlib import record, setup

setup()
rows, n = 64, 128256
x = torch.randn(rows, n) * 3
r = torch.arange(rows)
temp = (0.6 + 0.1 * (r % 7)).float().unsqueeze(1)
top_k = torch.where(r % 4 == 0, 40, n)
top_p = torch.where(r % 4 == 1, 0.9, 1.0).float().unsqueeze(1)
min_p = torch.where(r % 4 == 2, 0.05, 0.0).float().unsqueeze(1)
rep = torch.where(r % 2 == 1, 1.1, 1.0).float().unsqueeze(1)
presence = torch.where(r % 3 == 0, 0.2, 0.0).float().unsqueeze(1)
frequency = torch.where(r % 3 == 1, 0.1, 0.0).float().unsqueeze(1)
history = (torch.arange(256) * 7919 % n).unsqueeze(0).expand(rows, 256)
bias_idx = torch.tensor([11, 500, 1000, 90000])
bias_val = torch.tensor([2.0, -1.5, float("-inf"), 0.5])


def step():
    y = x.clone()
    y[:, bias_idx] += bias_val
    counts = torch.zeros(rows, n).scatter_add_(1, history, torch.ones(rows, 256))
    seen = counts > 0
    y = torch.where(seen, torch.where(y > 0, y / rep, y * rep), y)
    y = y - presence * seen - frequency * counts
    y = y / temp
    logprobs = torch.log_softmax(y, -1)
    kth = torch.topk(y, 40, dim=-1).values[:, -1:]
    y = torch.where((top_k.unsqueeze(1) < n) & (y < kth), float("-inf"), y)
    sorted_y, order = torch.sort(y, descending=True)
    cum = torch.softmax(sorted_y, -1).cumsum(-1)
    drop = (cum - torch.softmax(sorted_y, -1)) >= top_p
    sorted_y = sorted_y.masked_fill(drop, float("-inf"))
    y = torch.full_like(y, float("-inf")).scatter(1, order, sorted_y)
    p = torch.softmax(y, -1)
    p = torch.where(p < min_p * p.max(-1, keepdim=True).values, 0.0, p)
    tok = torch.multinomial(p, 1)
    return tok, logprobs.gather(1, tok)


with torch.no_grad():
    record("sample_rows_mixed", "64x128256", step)
