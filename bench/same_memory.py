"""`python -m bench.same_memory`: pyoptim's step and torch's fused step on the same tensors.

    python -m bench.same_memory                       # Adam and AdamW, fp32 and bf16, 64M
    python -m bench.same_memory --dtypes bf16 --layouts 4

`python -m bench` gives every impl its own copy of the data. Where memory speed depends on where
the pages lie (the README's VM: one 64M step of the same kernel ran 25 or 34 ms by how its
tensors were allocated), that compares placements as much as kernels. Here pyoptim's Adam /
AdamW and torch.optim's fused one step one param, one grad and one state (pyoptim's state dict
is torch's: the same keys, dtypes and step tensor), in alternating blocks, so both read and
write the same pages. Each layout allocates the tensors anew, in another order and after a
spacer of another size, so the pages fall differently. It prints, per layout, each one's
median ms per step and the ratio torch / pyoptim (> 1: pyoptim is faster), and the load
average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

import torch

import pyoptim

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLASSES = ("Adam", "AdamW")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.same_memory",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=64 * 2**20, help="elements of the one param")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated: Adam, AdamW")
    ap.add_argument("--layouts", type=int, default=2, help="allocations of the tensors, each timed")
    ap.add_argument("--rounds", type=int, default=8, help="rounds of 3 steps of each, per layout")
    ap.add_argument("--quick", action="store_true", help="1M elements, 2 rounds (smoke run)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    return ap.parse_args(argv)


def _tensors(numel: int, dtype: torch.dtype, layout: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """Param, grad and a spacer, allocated in the order and after the spacer that `layout`
    picks (values from a fixed seed: the same in every layout)."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(numel, generator=gen), torch.randn(numel, generator=gen) * 1e-2
    spacer = torch.empty((3 * layout + 1) << 20, dtype=torch.uint8).fill_(0)
    order = (0, 1) if layout % 2 == 0 else (1, 0)
    made = [None, None]
    for k in order:
        made[k] = values[k].to(dtype)
    return made[0], made[1], spacer


def make_pair(cls_name: str, dtype: torch.dtype, numel: int, layout: int):
    """(param, pyoptim's optimizer, torch's fused one, spacer): one param and grad, and one state
    dict for both, made by a pyoptim step (pyoptim's state is torch's format)."""
    p, g, spacer = _tensors(numel, dtype, layout)
    p.grad = g
    ours = getattr(pyoptim, cls_name)([p], lr=1e-3)
    ours.step()
    theirs = getattr(torch.optim, cls_name)([p], lr=1e-3, fused=True)
    theirs.state[p] = ours.state[p]
    return p, ours, theirs, spacer


def time_layout(cls_name: str, dtype: torch.dtype, numel: int, layout: int, rounds: int
                ) -> dict[str, float]:
    _, ours, theirs, spacer = make_pair(cls_name, dtype, numel, layout)
    steps = {"pyoptim": ours.step, "torch-fused": theirs.step}
    for step in steps.values():
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name in (list(steps) if r % 2 == 0 else list(reversed(steps))):
            for _ in range(3):
                t0 = time.perf_counter()
                steps[name]()
                samples[name].append(time.perf_counter() - t0)
    del spacer
    ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    return {**ms, "ratio": ms["torch-fused"] / ms["pyoptim"]}


def main(argv: Sequence[str] | None = None, out=print) -> dict:
    args = parse_args(argv)
    numel, rounds = (2**20, 2) if args.quick else (args.numel, args.rounds)
    out(f"bench.same_memory: {numel / 2**20:g}M elements, {torch.get_num_threads()} threads, "
        f"pyoptim cpu_capability={pyoptim.cpu_capability()}, torch cpu_capability="
        f"{torch.backends.cpu.get_cpu_capability()}, load average (1 min) "
        f"{os.getloadavg()[0]:.2f}")
    rows = []
    for cls_name in args.classes.split(","):
        for dname in args.dtypes.split(","):
            for layout in range(args.layouts):
                r = time_layout(cls_name, DTYPES[dname], numel, layout, rounds)
                rows.append({"class": cls_name, "dtype": dname, "layout": layout, **r})
                out(f"  {cls_name:<6} {dname}  layout {layout}: pyoptim {r['pyoptim']:7.2f} ms, "
                    f"torch fused {r['torch-fused']:7.2f} ms, ratio {r['ratio']:.2f}x")
    out(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    res = {"numel": numel, "threads": torch.get_num_threads(),
           "pyoptim_cpu_capability": pyoptim.cpu_capability(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
