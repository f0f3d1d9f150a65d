"""`python -m bench.fsdp_overhead`: host overhead of one optimizer step on FSDP2-sharded params.

    python -m bench.fsdp_overhead                    # 1000 params, 2 ranks, AdamW and SGD
    python -m bench.fsdp_overhead --params 200 --steps 50 --world 4

Each rank (gloo, CPU processes, one intra-op thread each) shards a module of `--params` small
params with FSDP2's `fully_shard` (each param 16 x 8: 64 elements per rank on 2 ranks, so the
update itself costs microseconds and what is timed is the work around it), runs one backward to
get the sharded DTensor grads, then times `opt.step()` alone, step by step, for pyoptim and for
torch.optim's for-loop (`foreach=False`), `foreach=True` and `fused=True` (each on its own copy
of the module), and for pyoptim on plain tensors shaped as the local shards (the cost of the
DTensors themselves). The impls take turns, `--rounds` times, each for about `--round-time`
seconds a turn, so a change in the machine's load reaches all of them alike; the ranks step side
by side (one core each on a 2-core machine). The table gives each rank's median over all its
steps and the slowest rank's, in ms per step, and the ratio of torch's best impl to pyoptim. The
load average is printed with it: on a shared machine it says how much to trust the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pyoptim

IMPLS = ("pyoptim", "torch-forloop", "torch-foreach", "torch-fused")
PLAIN = "pyoptim-plain"  # pyoptim on plain tensors shaped as the local shards: no DTensor
OPTIMIZERS = {"adamw": ("AdamW", dict(lr=1e-6, weight_decay=0.01)),
              "sgd": ("SGD", dict(lr=1e-6, momentum=0.9))}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.fsdp_overhead",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1000, help="number of params (default 1000)")
    ap.add_argument("--world", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--rounds", type=int, default=10, help="turns per impl (default 10)")
    ap.add_argument("--round-time", type=float, default=0.2,
                    help="seconds of steps per turn, at least one step (default 0.2; torch's "
                         "for-loop takes ~0.5 s a step)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--optim", action="append", choices=sorted(OPTIMIZERS),
                    help="optimizer(s) to time (default: all)")
    return ap.parse_args(argv)


class Many(nn.Module):
    """`n` params of 16 x 8; the forward touches each once."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.ps = nn.ParameterList(nn.Parameter(torch.randn(16, 8) * 0.1) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((x @ p.t()).sum() for p in self.ps)


def _optimizer(cls: str, kwargs: dict, impl: str, params) -> torch.optim.Optimizer:
    if impl == "pyoptim":
        return getattr(pyoptim, cls)(params, **kwargs)
    flags = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
             "torch-fused": dict(fused=True)}[impl]
    return getattr(torch.optim, cls)(params, **kwargs, **flags)


def _time_steps(opt: torch.optim.Optimizer, seconds: float, times: list[float]) -> None:
    """Steps for about `seconds` (at least one), each one's time appended to `times`."""
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
        if t0 - start + times[-1] >= seconds:
            return


def _plain_copy(model: nn.Module) -> list[nn.Parameter]:
    """Plain params (with grads) shaped and valued as the model's local shards."""
    plain = []
    for p in model.parameters():
        q = nn.Parameter(p.to_local().detach().clone())
        q.grad = p.grad.to_local().clone()
        plain.append(q)
    return plain


def _rank(rank: int, args: argparse.Namespace, store: str, queue) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=args.world)
    try:
        mesh = init_device_mesh("cpu", (args.world,))
        results = {}
        for name in args.optim:
            cls, kwargs = OPTIMIZERS[name]
            opts = {}
            for impl in (*IMPLS, PLAIN):
                torch.manual_seed(0)
                model = fully_shard(Many(args.params), mesh=mesh)
                model(torch.randn(2, 8)).backward()
                params = _plain_copy(model) if impl == PLAIN else list(model.parameters())
                opt = _optimizer(cls, kwargs, "pyoptim" if impl == PLAIN else impl, params)
                try:
                    for _ in range(args.warmup):
                        opt.step()
                    opts[impl] = opt
                except NotImplementedError:  # torch's op has no DTensor sharding strategy
                    results[name, impl] = None
            times: dict[str, list[float]] = {impl: [] for impl in opts}
            for _ in range(args.rounds):
                for impl, opt in opts.items():
                    dist.barrier()  # the ranks step side by side
                    _time_steps(opt, args.round_time, times[impl])
            for impl, ts in times.items():
                results[name, impl] = statistics.median(ts) * 1e3
            del opts
        queue.put((rank, results))
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.optim = args.optim or sorted(OPTIMIZERS)
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="pyoptim-bench-") as tmp:
        mp.start_processes(_rank, args=(args, os.path.join(tmp, "store"), queue),
                           nprocs=args.world, join=True, start_method="spawn")
    per_rank = dict(queue.get() for _ in range(args.world))
    load_after = os.getloadavg()
    print(f"FSDP2, {args.params} params of 16 x 8 sharded over {args.world} ranks (gloo, CPU, "
          f"1 thread per rank), {args.rounds} turns of {args.round_time} s per impl; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, pyoptim "
          f"{pyoptim.cpu_capability()}")
    print(f"load average (1, 5, 15 min): before {_fmt(load_before)}, after {_fmt(load_after)}")
    for name in args.optim:
        print(f"\n{OPTIMIZERS[name][0]}: ms per step, median")
        print(f"  {'impl':<16}" + "".join(f"{f'rank {r}':>10}" for r in range(args.world))
              + f"{'slowest':>10}{'/ pyoptim':>11}")
        slowest = {}
        for impl in (*IMPLS, PLAIN):
            times = [per_rank[r][name, impl] for r in range(args.world)]
            if None in times:
                print(f"  {impl:<16}  n/a: torch's op has no DTensor sharding strategy")
                continue
            slowest[impl] = max(times)
            print(f"  {impl:<16}" + "".join(f"{t:>10.3f}" for t in times)
                  + f"{slowest[impl]:>10.3f}{slowest[impl] / slowest['pyoptim']:>10.2f}x")
        best = min((i for i in IMPLS if i != "pyoptim" and i in slowest), key=slowest.get)
        print(f"  torch's best ({best}) / pyoptim: {slowest[best] / slowest['pyoptim']:.1f}x; "
              f"{PLAIN}: pyoptim on plain tensors shaped as the local shards")


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
