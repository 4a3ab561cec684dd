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


def gemv(m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    report("fp16_matmul", "f16", f"{m}x{n}x{k}", time_ms(lambda: x @ w.t()), 2 * n * k)


layernorm(32768, 1024, torch.float32, "f32")
layernorm(8192, 4096, torch.float32, "f32")
layernorm(32768, 1024, torch.bfloat16, "bf16")
layernorm(8192, 4096, torch.bfloat16, "bf16")
topk_softmax(64, 128256, 50)
topk_softmax(512, 128256, 50)
topk_softmax(8, 262144, 50)
gemv(1, 4096, 4096)
