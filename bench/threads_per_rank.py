"""`python -m bench.threads_per_rank`: ranks sharing a machine, each with 1 thread vs the default.

    python -m bench.threads_per_rank                 # 2 ranks; 1 thread each, then the default
    python -m bench.threads_per_rank --world 4 --numel 1000000

pyoptim's CPU step runs in torch's intra-op thread pool, so a rank uses torch.get_num_threads()
threads: torchrun sets OMP_NUM_THREADS=1 per rank, other launchers (torch.multiprocessing, a
plain `python` per rank) leave torch's default, all the machine's cores, in every rank. This
starts `--world` ranks (spawned, no torchrun; gloo only for a barrier), and in each times
pyoptim.AdamW's step on one param of `--numel` float32 elements and on 1000 params of 1024,
all ranks stepping at once, with 1 thread per rank and with the default thread count, in turns
(`--rounds` of each, so a change in the machine's load reaches both alike). It prints each
rank's median ms per step and the load average (the machine may be shared).
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

import pyoptim

WORKLOADS = ("1 x numel", "1000 x 1024")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.threads_per_rank",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--numel", type=int, default=4 << 20,
                    help="elements of the one large param (default 4M: 64 MB of param, grad and "
                         "state)")
    ap.add_argument("--rounds", type=int, default=6, help="turns per setting (default 6)")
    ap.add_argument("--round-time", type=float, default=0.5,
                    help="seconds of steps per turn (default 0.5)")
    return ap.parse_args(argv)


def _params(workload: str, numel: int) -> list[torch.nn.Parameter]:
    shapes = [(numel,)] if workload == "1 x numel" else [(1024,)] * 1000
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def _rank(rank: int, args: argparse.Namespace, store: str, queue) -> None:
    default = torch.get_num_threads()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=args.world)
    try:
        opts = {w: pyoptim.AdamW(_params(w, args.numel), lr=1e-6) for w in WORKLOADS}
        times: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.rounds):
            for threads in (1, default):
                torch.set_num_threads(threads)
                for workload, opt in opts.items():
                    opt.step()  # the thread pool at this size
                    dist.barrier()  # every rank steps at the same time
                    ts = times.setdefault((threads, workload), [])
                    start = time.perf_counter()
                    while time.perf_counter() - start < args.round_time:
                        t0 = time.perf_counter()
                        opt.step()
                        ts.append(time.perf_counter() - t0)
        results = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}
        queue.put((rank, default, results))
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    env_threads = os.environ.pop("OMP_NUM_THREADS", None)  # the ranks get torch's default
    load_before = os.getloadavg()
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="pyoptim-bench-") as tmp:
        mp.start_processes(_rank, args=(args, os.path.join(tmp, "store"), queue),
                           nprocs=args.world, join=True, start_method="spawn")
    got = sorted(queue.get() for _ in range(args.world))
    load_after = os.getloadavg()
    default = got[0][1]
    print(f"{args.world} ranks on {os.cpu_count()} CPUs, pyoptim.AdamW, float32, "
          f"{pyoptim.cpu_capability()}; every rank stepping at once; median ms per step"
          + (f" (OMP_NUM_THREADS={env_threads} was unset for the ranks)" if env_threads else ""))
    print("load average (1, 5, 15 min): before "
          + ", ".join(f"{x:.2f}" for x in load_before) + "; after "
          + ", ".join(f"{x:.2f}" for x in load_after))
    print(f"  {'workload':<14}{'threads/rank':>13}"
          + "".join(f"{f'rank {r}':>10}" for r in range(args.world)) + f"{'slowest':>10}")
    for workload in WORKLOADS:
        name = f"1 x {args.numel}" if workload == "1 x numel" else workload
        for threads in (1, default):
            times = [results[threads, workload] for _, _, results in got]
            print(f"  {name:<14}{threads:>13}" + "".join(f"{t:>10.2f}" for t in times)
                  + f"{max(times):>10.2f}")


if __name__ == "__main__":
    main()
