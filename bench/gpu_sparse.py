"""GPU benchmark: pyoptim vs torch on CUDA for SGD-momentum (dense) and SparseAdam.

    python -m bench.gpu_sparse [--reps 20] [--json out.json] [--quick]

* SGD (momentum 0.9, float32): one 256M-element tensor and the transformer list of
  bench/gpu_adam.py; torch fused SGD (torch.optim.SGD(fused=True)) and torch foreach vs pyoptim.
  SGD-momentum reads param, grad, buf and writes param, buf: 20 bytes per element.
* SparseAdam (float32): a 10M x 128 embedding table, 1M lookups per step (uniform, and Zipf
  with exponent 1.1: many duplicates); torch.optim.SparseAdam vs pyoptim.SparseAdam. The same
  sparse gradient (uncoalesced, as nn.Embedding(sparse=True) makes it) is set before each step.
Time of one opt.step() (median over reps, CUDA events, the L2 flushed before each rep).
"""

from __future__ import annotations

import argparse
import json

import torch

import pyoptim
from bench.gpu_adam import copy_bandwidth, l2_flusher, time_gpu


def zipf_indices(n, rows, a, gen):
    # inverse-CDF sampling of a truncated Zipf(a) over [0, rows), shuffled row ids
    ranks = torch.arange(1, rows + 1, dtype=torch.float64, device="cuda")
    cdf = torch.cumsum(ranks.pow(-a), 0)
    cdf /= cdf[-1].clone()
    u = torch.rand(n, generator=gen, dtype=torch.float64, device="cuda")
    r = torch.searchsorted(cdf, u).clamp_(max=rows - 1)
    perm = torch.randperm(rows, generator=gen, device="cuda")
    return perm[r]


def bench_sgd(args, flush, bw, results):
    from bench.gpu_adam import workloads
    wl = workloads(args.quick)
    for wname in ("one 256M tensor", "transformer list"):
        shapes = wl[wname]
        numel = sum(torch.Size(s).numel() for s in shapes)
        params = [torch.randn(s, device="cuda") for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        impls = {
            "torch fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
            "torch foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
            "pyoptim": lambda ps: pyoptim.SGD(ps, lr=1e-3, momentum=0.9),
        }
        base = None
        for iname, make in impls.items():
            opt = make(params)
            opt.step()  # creates the momentum buffers (first step) outside the timing
            ms = time_gpu(opt.step, flush, args.reps)
            del opt
            torch.cuda.empty_cache()
            gbs = 20 * numel / (ms * 1e-3)
            base = ms if base is None else base
            results.append(dict(workload=wname, optimizer="SGD-momentum", impl=iname, ms=ms,
                                gb_s=gbs / 1e9, pct_copy=100 * gbs / bw, vs_torch_fused=base / ms))
            print(f"{wname:<22} {'SGD-mom':<10} {iname:<14} {ms:9.3f} {gbs / 1e9:7.0f} "
                  f"{100 * gbs / bw:6.1f} {base / ms:7.2f}x", flush=True)
        del params
        torch.cuda.empty_cache()


def bench_sparse_adam(args, flush, results):
    rows, width, lookups = (10_000_000, 128, 1_000_000) if not args.quick else (1_000_000, 128,
                                                                                100_000)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dist in ("uniform", "zipf1.1"):
        if dist == "uniform":
            idx = torch.randint(0, rows, (lookups,), generator=gen, device="cuda")
        else:
            idx = zipf_indices(lookups, rows, 1.1, gen)
        uniq = torch.unique(idx).numel()
        vals = torch.randn(lookups, width, generator=gen, device="cuda") * 1e-2
        grad = torch.sparse_coo_tensor(idx.unsqueeze(0), vals, (rows, width))
        base = None
        for iname, cls in (("torch", torch.optim.SparseAdam), ("pyoptim", pyoptim.SparseAdam)):
            w = torch.nn.Parameter(torch.randn(rows, width, device="cuda") * 0.1)
            opt = cls([w], lr=1e-3)

            def step():
                w.grad = grad
                opt.step()

            ms = time_gpu(step, flush, args.reps)
            base = ms if base is None else base
            results.append(dict(workload=f"SparseAdam 10Mx128 {dist}", impl=iname, ms=ms,
                                unique_rows=uniq, vs_torch=base / ms))
            print(f"{'SparseAdam ' + dist:<22} {uniq:>10} {iname:<14} {ms:9.3f} "
                  f"{base / ms:7.2f}x", flush=True)
            del opt, w
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_sparse needs a CUDA GPU")
    flush = l2_flusher()
    bw = copy_bandwidth(flush, args.reps)
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"device copy bandwidth: {bw / 1e9:.0f} GB/s (read + write)")
    print(f"{'workload':<22} {'opt':<10} {'impl':<14} {'ms/step':>9} {'GB/s':>7} {'%copy':>6} "
          f"{'vs torch':>8}")
    results = []
    bench_sgd(args, flush, bw, results)
    print(f"{'workload':<22} {'unique':>10} {'impl':<14} {'ms/step':>9} {'vs torch':>8}")
    bench_sparse_adam(args, flush, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(0), copy_gb_s=bw / 1e9,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
