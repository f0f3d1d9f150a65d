"""Multi-process tests on gloo: CPU processes, one per rank, running a function of a test module.

`spawn(fn, world_size, *args)` starts `world_size` processes (torch.multiprocessing, forked from
a forkserver: Note [Forked ranks]), joins a gloo process group through a file store in a fresh
temporary directory (no port to pick, nothing left behind), and calls `fn(rank, world_size,
*args)` in each. A rank that raises fails the test with its traceback, and the others are
stopped. Each rank runs one intra-op thread: ranks share the machine's cores (README, "Threads
per rank").

`torchrun(target, world_size)` runs `target` ("module:function", the module next to this file)
under `python -m torch.distributed.run --standalone`, which sets up the ranks as torchrun does
(its environment variables, and OMP_NUM_THREADS=1 per rank when it is unset).

A test that needs more processes than the machine can run side by side skips with the reason
(`needs_procs`): at most MAX_PROCS_PER_CPU processes per CPU. The ranks' models are tiny, and each
rank spends most of its time importing torch and waiting in collectives, so 2 per CPU (4 ranks on
CI's 2 cores) still run in seconds.
"""

from __future__ import annotations

import datetime
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MAX_PROCS_PER_CPU = 2
# Note [Forked ranks]: a spawned rank spends seconds importing torch again (most of a test's
# time on 2 cores), and a fork of the test process is unsafe once the tests before have run
# autograd's worker threads ("Unable to handle autograd's threading in combination with
# fork-based multiprocessing"). So ranks are forked from a forkserver: one fresh process, started
# once per test session, that imports torch, pyoptim and the distributed modules (PRELOAD) and
# then runs nothing; every rank is a fork of it. Elsewhere (no forkserver), ranks are spawned.
PRELOAD = ["torch", "pyoptim", "torch.distributed.checkpoint",
           "torch.distributed.checkpoint.state_dict", "torch.distributed.device_mesh",
           "torch.distributed.fsdp", "torch.distributed.optim", "torch.distributed.tensor",
           "torch.nn.parallel", "torch._dynamo"]  # FSDP2 imports dynamo lazily
START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
if START_METHOD == "forkserver":
    mp.set_forkserver_preload(PRELOAD)
TIMEOUT = datetime.timedelta(seconds=120)  # a rank stuck in a collective fails, not hangs


def needs_procs(world_size: int) -> pytest.MarkDecorator:
    """Skip unless gloo is there and `world_size` processes fit on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not (dist.is_available() and dist.is_gloo_available()):
        return pytest.mark.skip(reason="torch.distributed with gloo is not available")
    return pytest.mark.skipif(
        world_size > MAX_PROCS_PER_CPU * (cpus or 1),
        reason=f"needs {world_size} processes; this machine has {cpus} CPU(s), and more than "
               f"{MAX_PROCS_PER_CPU} processes per CPU would not finish in CI's time")


def _entry(rank: int, fn: Callable[..., None], world_size: int, store: str,
           args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=TIMEOUT)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run fn(rank, world_size, *args) on `world_size` gloo ranks; raise if any rank raised."""
    with tempfile.TemporaryDirectory(prefix="pyoptim-dist-") as tmp:
        mp.start_processes(_entry, args=(fn, world_size, os.path.join(tmp, "store"), args),
                           nprocs=world_size, join=True, start_method=START_METHOD)


def torchrun(target: str, world_size: int, env: dict[str, str] | None = None,
             timeout: float = 300) -> str:
    """Run `target` ("module:function", called as function(rank, world_size)) under torchrun on
    `world_size` local ranks; its output, or AssertionError with it if a rank failed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world_size}", os.path.abspath(__file__), target]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun {target} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


if __name__ == "__main__":  # a rank started by torchrun(): its environment says which
    module, function = sys.argv[1].split(":")
    dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        getattr(importlib.import_module(module), function)(dist.get_rank(),
                                                           dist.get_world_size())
    finally:
        dist.destroy_process_group()
