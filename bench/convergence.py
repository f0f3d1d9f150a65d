"""`python -m bench.convergence`: does training in reduced precision track float32?

    python -m bench.convergence                       # every mode this pyoptim has
    python -m bench.convergence --plot conv.png --steps 3000
    python -m bench.convergence --quick               # a smoke run

Accuracy evidence for pyoptim's mixed-precision modes (a bench, not a test). One deep MLP
regression (a student of a fixed random teacher network, synthetic data, no download) is trained
from the same start on the same batches with pyoptim.AdamW in each mode:

  fp32          float32 params and state: the baseline
  bf16          bfloat16 params, plain round-to-nearest on store (what torch.optim does)
  bf16+master   bfloat16 params, float32 master weights in the state (master_weights=True)
  bf16+sr       bfloat16 params, stochastic rounding on store (stochastic_rounding=True)
  bf16+kahan    bfloat16 params, Kahan-compensated store (kahan_summation=True)
  fp32+bf16st   float32 params, bfloat16 moments (state_dtype=torch.bfloat16)
  fp32+8bit     float32 params, 8-bit moments with block scales (state_dtype="8bit")

Modes whose flag this pyoptim does not have are listed as skipped. The learning rate decays
(cosine, 3e-4 to 3e-6), so most updates are smaller than half a bfloat16 ulp of the weights:
where plain rounding drops them, the other modes keep them. Reported per mode: the final
held-out loss (float32 evaluation of the weights as stored), its ratio to fp32's, and the mean
gap to fp32's curve over the last quarter of training. `--plot` saves the curves as a PNG.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

import pyoptim

from . import harness

# mode -> (param dtype, extra AdamW kwargs)
MODES: dict[str, tuple[torch.dtype, dict]] = {
    "fp32": (torch.float32, {}),
    "bf16": (torch.bfloat16, {}),
    "bf16+master": (torch.bfloat16, {"master_weights": True}),
    "bf16+sr": (torch.bfloat16, {"stochastic_rounding": True}),
    "bf16+kahan": (torch.bfloat16, {"kahan_summation": True}),
    "fp32+bf16st": (torch.float32, {"state_dtype": torch.bfloat16}),
    "fp32+8bit": (torch.float32, {"state_dtype": "8bit"}),
}


def mlp(d_in: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.GELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def available(mode: str) -> bool:
    """Whether this pyoptim takes the mode's flags."""
    dtype, kw = MODES[mode]
    p = nn.Parameter(torch.zeros(2, dtype=dtype))
    try:
        pyoptim.AdamW([p], **kw)
    except TypeError:
        return False
    return True


def train(mode: str, start: nn.Module, teacher: nn.Module, steps: int, batch: int, lr: float,
          eval_x: torch.Tensor, eval_y: torch.Tensor, every: int, seed: int) -> list[float]:
    dtype, kw = MODES[mode]
    model = copy.deepcopy(start).to(dtype)
    opt = pyoptim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 100)
    evaluator = copy.deepcopy(start)  # float32: the weights as stored, evaluated in float32
    gen = torch.Generator().manual_seed(seed)
    d_in = eval_x.shape[1]
    curve = []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            with torch.no_grad():
                for a, b in zip(evaluator.parameters(), model.parameters()):
                    a.copy_(b)
                curve.append(float(nn.functional.mse_loss(evaluator(eval_x).squeeze(1),
                                                          eval_y)))
        if step == steps:
            break
        x = torch.randn(batch, d_in, generator=gen)
        with torch.no_grad():
            y = teacher(x).squeeze(1)
        opt.zero_grad()
        out = model(x.to(dtype)).squeeze(1).float()
        nn.functional.mse_loss(out, y).backward()
        opt.step()
        sched.step()
    return curve


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.convergence",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4, help="peak lr (cosine to lr / 100)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (few steps, small model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", action="append", choices=list(MODES))
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--no-latest", action="store_true",
                    help="don't write bench/results/convergence.json")
    ap.add_argument("--plot", metavar="PNG")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, out=print) -> dict:
    if args.quick:
        args.steps, args.width, args.depth, args.batch = 40, 32, 2, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_in = 32
    teacher = mlp(d_in, 64, 2)
    start = mlp(d_in, args.width, args.depth)
    gen = torch.Generator().manual_seed(1)
    eval_x = torch.randn(1024, d_in, generator=gen)
    with torch.no_grad():
        eval_y = teacher(eval_x).squeeze(1)
    every = max(1, args.steps // 50)
    modes = args.mode or list(MODES)
    out(f"convergence: MLP {d_in}->{args.width}x{args.depth}->1 student of a fixed teacher, "
        f"AdamW lr {args.lr:g} cosine to {args.lr / 100:g}, {args.steps} steps of {args.batch}, "
        f"threads={torch.get_num_threads()}")
    curves: dict[str, list[float]] = {}
    skipped = []
    t0 = time.perf_counter()
    for mode in modes:
        if not available(mode):
            skipped.append(mode)
            out(f"  {mode:<12} skipped: this pyoptim has no {MODES[mode][1]} flag")
            continue
        t = time.perf_counter()
        curves[mode] = train(mode, start, teacher, args.steps, args.batch, args.lr, eval_x,
                             eval_y, every, seed=2)
        out(f"  {mode:<12} trained in {time.perf_counter() - t:.1f} s")
    base = curves.get("fp32")
    out(f"\n  {'mode':<12} {'final loss':>11} {'vs fp32':>8} {'mean gap, last 25%':>19}")
    summary = {}
    for mode, c in curves.items():
        tail = slice(len(c) * 3 // 4, None)
        ratio = c[-1] / base[-1] if base else math.nan
        gap = (sum(a / b for a, b in zip(c[tail], base[tail])) / len(c[tail]) - 1
               if base else math.nan)
        summary[mode] = {"final_loss": c[-1], "final_vs_fp32": ratio, "mean_gap_last_quarter": gap}
        out(f"  {mode:<12} {c[-1]:11.4g} {ratio:7.2f}x {100 * gap:17.1f} %")
    res = {"args": {k: v for k, v in vars(args).items() if k != "plot"}, "every": every,
           "curves": curves, "summary": summary, "skipped": skipped,
           "wall_s": time.perf_counter() - t0}
    harness.write_results(res, None if args.no_latest else "convergence.json", args.json, out)
    if args.plot:
        plot(res, args.plot)
        out(f"wrote {args.plot}")
    return res


def plot(res: dict, path: str) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for mode, c in res["curves"].items():
        ax.plot([k * res["every"] for k in range(len(c))], c, label=mode)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out MSE (float32 evaluation)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    a = res["args"]
    ax.set_title(f"pyoptim.AdamW, MLP {a['width']}x{a['depth']}, lr {a['lr']:g} cosine to "
                 f"{a['lr'] / 100:g}, {a['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: Sequence[str] | None = None, out=print) -> dict:
    return run(parse_args(argv), out)


if __name__ == "__main__":
    main()
