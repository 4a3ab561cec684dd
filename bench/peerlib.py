"""Shared timing for the PyTorch peer scripts (bench/peer_*.py).

Each script calls setup() once, then record(kernel, shape, fn, flops=..., nbytes=...)
per shape with the same kernel and shape strings the C benchmark prints, so
bench/compare.py can pair the rows of build/bench.csv."""
import os
import sys
import time

import torch

VARIANT = os.environ.get("MLK_PEER_VARIANT", "plain")


def setup():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return threads


def timeit(fn, reps=7):
    fn()
    ts = []
    for _ in range(max(reps, 5)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def record(kernel, shape, fn, flops=None, nbytes=None, reps=7):
    med, mn = timeit(fn, reps)
    if flops is not None:
        rate, unit = flops / med * 1e-9, "GFLOP/s"
    elif nbytes is not None:
        rate, unit = nbytes / med * 1e-9, "GB/s"
    else:
        rate, unit = 0.0, "-"
    print("%-28s %-30s %10.3f ms (min %8.3f)  %8.2f %s  [torch %s, %s]"
          % (kernel, shape, med * 1e3, mn * 1e3, rate, unit, torch.__version__, VARIANT))
    sys.stdout.flush()
    os.makedirs("build", exist_ok=True)
    with open("build/bench.csv", "a") as f:
        f.write("torch-%s,%s,%s,%.6f,%.4f,%s,0,%d\n"
                % (VARIANT, kernel, shape, med * 1e3, rate, unit, torch.get_num_threads()))
