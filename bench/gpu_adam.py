"""GPU benchmark: pyoptim vs torch's fused CUDA Adam / AdamW.

    python -m bench.gpu_adam [--reps 20] [--json out.json] [--quick]

Three workloads (float32): one 256M-element tensor; a transformer-like list (194 tensors,
~28M elements); 10,000 tiny tensors (1..1024 elements). For each, the time of one optimizer
step on the GPU (median over reps, CUDA events around the step, the L2 cache flushed before
each rep), and the bandwidth it reaches as a share of a device-to-device copy measured in the
same run (Adam reads param, grad, exp_avg, exp_avg_sq and writes three of them: 28 bytes per
float32 element; the copy moves 8 bytes per element).

The events bracket the whole `opt.step()` call, so host-side work (Python, argument packing,
launches) counts wherever the GPU waits for it: the 256M case is bandwidth-bound, the list
cases are largely host-bound.

Implementations: torch fused (torch.optim.X(fused=True)), pyoptim default (step counts on the
CPU, coefficients on the host) and pyoptim fused (step counts on the GPU, as torch's fused).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import pyoptim


def l2_flusher():
    n = torch.cuda.get_device_properties(0).L2_cache_size * 4 // 4 or 64 << 20
    buf = torch.empty(max(n, 64 << 20) // 4, dtype=torch.float32, device="cuda")
    return lambda: buf.zero_()


def time_gpu(fn, flush, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(flush, reps):
    """Bytes per second of a device-to-device copy of 1 GiB (read + write counted)."""
    n = 256 << 20
    src = torch.ones(n, device="cuda")
    dst = torch.empty_like(src)
    ms = time_gpu(lambda: dst.copy_(src), flush, reps)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3)


def workloads(quick):
    big = [(256 << 20,)] if not quick else [(32 << 20,)]
    d, layers = 384, 16
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (d,), (d,), (4 * d, d), (4 * d,),
             (d, 4 * d), (d,)]
    transformer = block * layers + [(d,), (d,)]
    g = torch.Generator().manual_seed(0)
    tiny = [(int(s),) for s in torch.randint(1, 1025, (10000 if not quick else 1000,), generator=g)]
    return {"one 256M tensor": big, "transformer list": transformer, "10k tiny tensors": tiny}


def make_impls(cls_name):
    return {
        "torch fused": lambda ps: getattr(torch.optim, cls_name)(ps, lr=1e-3, fused=True),
        "pyoptim": lambda ps: getattr(pyoptim, cls_name)(ps, lr=1e-3),
        "pyoptim fused": lambda ps: getattr(pyoptim, cls_name)(ps, lr=1e-3, fused=True),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller workloads (smoke test)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_adam needs a CUDA GPU")
    flush = l2_flusher()
    bw = copy_bandwidth(flush, args.reps)
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"device copy bandwidth: {bw / 1e9:.0f} GB/s (read + write)")
    results = []
    header = f"{'workload':<18} {'opt':<6} {'impl':<14} {'ms/step':>9} {'GB/s':>7} {'%copy':>6} {'vs torch':>8}"
    print(header)
    print("-" * len(header))
    for wname, shapes in workloads(args.quick).items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        params = [torch.randn(s, device="cuda") for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        for cls_name in ("Adam", "AdamW"):
            base = None
            for iname, make in make_impls(cls_name).items():
                opt = make(params)
                ms = time_gpu(opt.step, flush, args.reps)
                del opt
                torch.cuda.empty_cache()
                gbs = 28 * numel / (ms * 1e-3)
                base = ms if base is None else base
                row = dict(workload=wname, optimizer=cls_name, impl=iname, tensors=len(shapes),
                           numel=numel, ms=ms, gb_s=gbs / 1e9, pct_copy=100 * gbs / bw,
                           speedup_vs_torch_fused=base / ms)
                results.append(row)
                print(f"{wname:<18} {cls_name:<6} {iname:<14} {ms:9.3f} {gbs / 1e9:7.0f} "
                      f"{100 * gbs / bw:6.1f} {base / ms:7.2f}x", flush=True)
        del params
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(0), copy_gb_s=bw / 1e9,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
