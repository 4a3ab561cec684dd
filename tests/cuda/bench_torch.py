"""PyTorch on the same GPU at bench_cuda.cu's shapes; the same CSV lines
(bench,kernel,dtype,shape,ms,GB/s) with kernel names prefixed torch_.
Median of 20 runs after 3 warm-ups, CUDA events. Run by `make cuda-bench`."""
import sys

try:
    import torch
except ImportError:
    print("bench_torch: PyTorch is not installed: no comparison")
    sys.exit(1)
if not torch.cuda.is_available():
    print("bench_torch: PyTorch sees no CUDA device: no comparison")
    sys.exit(1)


def time_ms(fn):
    times = []
    for i in range(23):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def report(kernel, dtype, shape, ms, nbytes):
    print(f"bench,torch_{kernel},{dtype},{shape},{ms:.4f},{nbytes / (ms * 1e-3) / 1e9:.1f}")


def layernorm(rows, dim, dtype, name):
    x = torch.randn(rows, dim, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.ones(dim, device="cuda", requires_grad=True)
    b = torch.zeros(dim, device="cuda", requires_grad=True)
    dy = torch.randn(rows, dim, device="cuda", dtype=dtype)
    size = x.element_size() * rows * dim
    # fp32 parameters with bf16 rows, as mlk_cuda_layernorm_* takes them
    fwd = lambda: torch.nn.functional.layer_norm(x, (dim,), w.to(dtype), b.to(dtype), 1e-5)
    report("layernorm_fwd", name, f"{rows}x{dim}", time_ms(lambda: fwd()), 2 * size)
    y = fwd()
    bwd = lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
    report("layernorm_bwd", name, f"{rows}x{dim}", time_ms(bwd), 3 * size)


def topk_softmax(rows, n, k):
    x = torch.randn(rows, n, device="cuda")

    def run():
        v, i = torch.topk(x, k, dim=-1)
        return torch.exp(v - torch.logsumexp(x, dim=-1, keepdim=True)), i

    report("topk_softmax", "f32", f"{rows}x{n}_k{k}", time_ms(run), 4 * rows * n)


def sample(rows, n, temperature, top_k, top_p, what):
    # logits uniform in [-1, 1) as bench_cuda.cu's; HF's filters: sort, cumulative mass, multinomial
    x = torch.rand(rows, n, device="cuda") * 2 - 1

    def run():
        logits = x / temperature
        if top_k:
            v, i = torch.topk(logits, top_k, dim=-1)
        else:
            v, i = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(v, dim=-1)
        if top_p < 1:
            drop = p.cumsum(dim=-1) - p > top_p
            p = p.masked_fill(drop, 0)
        return i.gather(-1, torch.multinomial(p, 1))

    report("sample", "f32", f"{rows}x{n}_{what}", time_ms(run), 4 * rows * n)


def gemv(m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    report("fp16_matmul", "f16", f"{m}x{n}x{k}", time_ms(lambda: x @ w.t()), 2 * n * k)


def attn_tensors(b, h, n, d, dtype, kv_heads=0, len_kv=0, grad=False):
    hk, nk = kv_heads or h, len_kv or n
    q = torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=grad)
    k, v = (torch.randn(b, hk, nk, d, device="cuda", dtype=dtype, requires_grad=grad) for _ in range(2))
    return q, k, v


def attn_fwd(b, h, n, d, causal, dtype, name, kv_heads=0, len_kv=0):
    # scaled_dot_product_attention (PyTorch picks the flash kernel for
    # bf16); a GQA decode shape repeats K and V to every query head first,
    # outside the timing; GB/s as bench_cuda.cu counts it
    q, k, v = attn_tensors(b, h, n, d, dtype, kv_heads, len_kv)
    if kv_heads:
        k, v = (t.repeat_interleave(h // kv_heads, dim=1) for t in (k, v))
    run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
    if len_kv:
        shape = f"{b}x{h}x{n}x{d}_kv{kv_heads}x{len_kv}"
        nbytes = (2 * b * h * n * d + 2 * b * kv_heads * len_kv * d) * q.element_size()
    else:
        shape = f"{b}x{h}x{n}x{d}" + ("_causal" if causal else "")
        nbytes = 4 * b * h * n * d * q.element_size()
    report("attn_fwd", name, shape, time_ms(run), nbytes)


def kv_decode(n_seqs, length, heads, kv_heads, d, dtype, name):
    # one decode step of n_seqs sequences through SDPA on a contiguous
    # cache (K and V repeated to every query head beforehand); GB/s counts
    # the cache's K and V bytes, as bench_cuda.cu's paged decode does
    q = torch.randn(n_seqs, heads, 1, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(n_seqs, kv_heads, length, d, device="cuda", dtype=dtype)
            .repeat_interleave(heads // kv_heads, dim=1) for _ in range(2))
    run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    nbytes = 2 * n_seqs * kv_heads * length * d * q.element_size()
    report("kv_attn_decode", name, f"{n_seqs}x{length}_h{heads}/{kv_heads}_d{d}", time_ms(run), nbytes)


def attn_bwd(b, h, n, d, causal, dtype, name):
    # the backward of PyTorch's own attention from a kept forward
    q, k, v = attn_tensors(b, h, n, d, dtype, grad=True)
    dout = torch.randn(b, h, n, d, device="cuda", dtype=dtype)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
    run = lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
    shape = f"{b}x{h}x{n}x{d}" + ("_causal" if causal else "")
    report("attn_bwd", name, shape, time_ms(run), 8 * q.element_size() * b * h * n * d)


layernorm(32768, 1024, torch.float32, "f32")
layernorm(8192, 4096, torch.float32, "f32")
layernorm(32768, 1024, torch.bfloat16, "bf16")
layernorm(8192, 4096, torch.bfloat16, "bf16")
topk_softmax(64, 128256, 50)
topk_softmax(512, 128256, 50)
topk_softmax(8, 262144, 50)
topk_softmax(8, 262144, 4096)
sample(64, 128256, 0.005, 0, 0.9, "top_p0.9_T0.005")
sample(64, 128256, 1.0, 0, 0.9, "top_p0.9_T1")
sample(64, 128256, 1.0, 4096, 1.0, "top_k4096")
gemv(1, 4096, 4096)
kv_decode(32, 4096, 32, 8, 128, torch.float16, "f16")
bf16 = torch.bfloat16
attn_fwd(4, 16, 4096, 64, 1, bf16, "bf16")
attn_fwd(4, 16, 4096, 64, 0, bf16, "bf16")
attn_fwd(2, 16, 8192, 128, 1, bf16, "bf16")
attn_fwd(8, 32, 1024, 128, 1, bf16, "bf16")
attn_fwd(4, 16, 4096, 64, 1, torch.float32, "f32")
attn_fwd(1, 32, 1, 128, 0, bf16, "bf16", 8, 4096)
attn_fwd(1, 32, 1, 128, 0, bf16, "bf16", 8, 32768)
attn_bwd(4, 16, 4096, 64, 1, bf16, "bf16")
attn_bwd(4, 16, 4096, 64, 0, bf16, "bf16")
attn_bwd(2, 16, 8192, 128, 1, bf16, "bf16")
attn_bwd(8, 32, 1024, 128, 1, bf16, "bf16")
attn_bwd(4, 16, 4096, 64, 1, torch.float32, "f32")
