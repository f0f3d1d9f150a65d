"""SGD benchmark: pyoptim vs torch.optim.SGD (default single-tensor, foreach, fused) in one run.

    python bench/sgd_standalone.py [--threads 2] [--quick]

Dense SGD-momentum (momentum=0.9, after the first step): 64M float32, 64M bfloat16, a
transformer-like list, 1000 tiny tensors. Sparse SGD (no momentum, torch has it) on a 1M x 128
float32 embedding with 65,536 lookups a step, uniform and Zipf (~10k unique rows), and pyoptim's
lazy sparse momentum on the same grads. Median ms/step; dense rows also give GB/s against a
triad-like bandwidth probe (3 reads + 2 writes per element for SGD-momentum).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import pyoptim

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def timeit(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def bandwidth_probe_ms(n, reps):
    """Time of the same traffic as SGD-momentum float32 (read p, g, b; write p, b): two fused
    in-place ops that torch runs at memory speed."""
    a, b, c = torch.ones(n), torch.ones(n), torch.ones(n)

    def f():
        torch.add(a, b, out=a)  # 2R 1W
        torch.add(c, c, out=c)  # 1R 1W
    return timeit(f, reps)


def dense_params(kind, dtype):
    if kind == "64M":
        shapes = [(64 * 2**20,)]
    elif kind == "transformer":
        shapes = []
        d, ff, layers = 1024, 4096, 8
        shapes.append((32000, d))
        for _ in range(layers):
            shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (ff, d), (ff,), (d, ff), (d,),
                       (d,), (d,), (d,), (d,)]
    else:  # tiny
        shapes = [(i % 37 + 1, 3) for i in range(1000)]
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    return ps


def bench_dense(kind, dtype, reps):
    ps = dense_params(kind, dtype)
    numel = sum(p.numel() for p in ps)
    out = {}
    impls = [
        ("pyoptim", lambda: pyoptim.SGD(ps, lr=1e-6, momentum=0.9)),
        ("torch fused", lambda: torch.optim.SGD(ps, lr=1e-6, momentum=0.9, fused=True)),
        ("torch foreach", lambda: torch.optim.SGD(ps, lr=1e-6, momentum=0.9, foreach=True)),
        ("torch default", lambda: torch.optim.SGD(ps, lr=1e-6, momentum=0.9)),
    ]
    for name, make in impls:
        opt = make()
        opt.step()  # first step creates the buffers
        out[name] = timeit(opt.step, reps)
        del opt
    return numel, out


def sparse_grad(rows, width, lookups, zipf, gen):
    if zipf:
        # Zipf-like ids (s = 1.1 over 1M ids, ~10k unique in 65k lookups)
        u = torch.rand(lookups, generator=gen, dtype=torch.float64)
        idx = ((rows ** (1 - 1.1) - 1) * u + 1) ** (1 / (1 - 1.1))
        idx = (idx.long() - 1).clamp_(0, rows - 1)
    else:
        idx = torch.randint(0, rows, (lookups,), generator=gen)
    vals = torch.randn(lookups, width, generator=gen)
    return torch.sparse_coo_tensor(idx[None], vals, (rows, width)), idx.unique().numel()


def bench_sparse(zipf, reps):
    gen = torch.Generator().manual_seed(0)
    rows, width, lookups = 2**20, 128, 65536
    w = torch.nn.Parameter(torch.randn(rows, width, generator=gen))
    g, uniq = sparse_grad(rows, width, lookups, zipf, gen)
    w.grad = g
    out = {}
    for name, make in [
        ("pyoptim", lambda: pyoptim.SGD([w], lr=1e-6)),
        ("torch default", lambda: torch.optim.SGD([w], lr=1e-6)),
        ("pyoptim momentum (lazy)", lambda: pyoptim.SGD([w], lr=1e-6, momentum=0.9)),
    ]:
        opt = make()
        opt.step()
        out[name] = timeit(opt.step, reps)
        del opt
    return uniq, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 15
    print(f"threads={args.threads} isa={pyoptim.cpu_capability()} torch={torch.__version__}")
    rows = []
    if args.only in ("", "dense"):
        probe = bandwidth_probe_ms(64 * 2**20, reps)
        print(f"bandwidth probe (64M f32, 3R/2W): {probe:.2f} ms")
        for kind, dtype in [("64M", torch.float32), ("64M", torch.bfloat16),
                            ("transformer", torch.float32), ("tiny", torch.float32)]:
            numel, out = bench_dense(kind, dtype, reps)
            for name, ms in out.items():
                extra = ""
                if kind == "64M" and dtype == torch.float32:
                    extra = f"  {100 * probe / ms:.0f}% of probe"
                rows.append((f"sgd-momentum {kind} {str(dtype)[6:]}", name, ms, extra))
            print_rows(rows[-len(out):], out)
    if args.only in ("", "sparse"):
        for zipf in (False, True):
            uniq, out = bench_sparse(zipf, reps)
            label = f"sparse 1Mx128 f32 65536 lookups {'zipf' if zipf else 'uniform'} ({uniq} rows)"
            rows.append((label, "", 0, ""))
            print_rows([(label, k, v, "") for k, v in out.items()], out)


def print_rows(rows, out):
    base = out.get("torch fused", out.get("torch default"))
    for label, name, ms, extra in rows:
        print(f"{label:55s} {name:26s} {ms:9.3f} ms  x{base / ms:5.2f} vs torch{extra}")


if __name__ == "__main__":
    main()
