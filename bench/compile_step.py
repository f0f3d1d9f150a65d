"""`python -m bench.compile_step`: pyoptim under torch.compile, against itself eager and against
torch.optim compiled (Note [Compiled step] in pyoptim/_compiled.py).

    python -m bench.compile_step             # every part (11-16 min on 2 cores)
    python -m bench.compile_step --threads 1 # on a shared machine: with two threads, torch's
                                             # CPU kernels stall whenever another process
                                             # holds a core (the README's numbers: --threads 1)
    python -m bench.compile_step --quick     # small sizes, AdamW only: a smoke run
    python -m bench.compile_step --opt sgd --part step
    python -m bench.compile_step --part floor --threads 1

Three parts, each for AdamW and SGD (momentum 0.9), float32, on the CPU:

  * step: `opt.step()` alone, grads preset once, on two models: `mlp-8x512` (8 Linear(512, 512),
    16 tensors, 2.1M elements) and `mlp-100x64` (100 Linear(64, 64), 200 tensors, 0.4M
    elements: the per-tensor host cost shows). Impls: pyoptim eager, pyoptim with
    `torch.compile(opt.step)`, torch.optim fused=True eager, and torch.optim compiled the same
    way with foreach=True (torch's recommended compiled optimizer: Inductor generates the
    update) and with fused=True (its fused kernel in the graph).
  * train: a whole training step, `torch.compile` of a function doing forward (batch 64), MSE
    loss, backward, `opt.step()` and `zero_grad()`, on `mlp-8x512`: pyoptim eager (nothing
    compiled), pyoptim compiled, torch.optim foreach / fused compiled.

Compile time is the wall time of the first two calls (compiling; SGD's second call compiles
again once its momentum buffers exist, for torch and pyoptim alike), Inductor's caches
disabled so that every impl compiles from scratch. Step times: medians of single calls in
interleaved rounds (bench/harness.py), so load from other processes falls on all impls alike.
The header prints the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from collections.abc import Callable

import torch

import pyoptim

from . import harness
from .harness import BenchConfig

OPTS = {
    "adamw": dict(pyoptim=pyoptim.AdamW, torch=torch.optim.AdamW,
                  kwargs=dict(lr=1e-3, weight_decay=0.01)),
    "sgd": dict(pyoptim=pyoptim.SGD, torch=torch.optim.SGD, kwargs=dict(lr=1e-2, momentum=0.9)),
}
MODELS = {"mlp-8x512": (8, 512), "mlp-100x64": (100, 64)}
QUICK_MODELS = {"mlp-8x128": (8, 128), "mlp-20x32": (20, 32)}
BATCH = 64


def make_model(layers: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods[:-1])


def make_opt(opt: str, impl: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    spec = OPTS[opt]
    if impl.startswith("pyoptim"):
        return spec["pyoptim"](model.parameters(), **spec["kwargs"])
    flag = "fused" if "fused" in impl else "foreach"
    return spec["torch"](model.parameters(), **spec["kwargs"], **{flag: True})


def compiled(fn: Callable[[], object]) -> tuple[Callable[[], object], float]:
    """`fn` compiled, and the wall time of its first two calls."""
    c = torch.compile(fn)
    t0 = time.perf_counter()
    c()
    c()
    return c, time.perf_counter() - t0


# Two rounds per workload, each timed on its own: in one process, torch 2.14.1 fails to
# recompile a compiled torch.optim.AdamW(foreach=True).step once a fused=True one has been
# compiled too ("Expected scalars to be on CPU, got meta" in _foreach_addcdiv_), and every call
# of an interleaved round may recompile (torch's SGD does once its buffers exist). pyoptim, eager
# and compiled, is in both: the ratios of each round are to it.
STEP_ROUNDS = (("pyoptim", "pyoptim-compiled", "torch-fused", "torch-foreach-compiled"),
               ("pyoptim", "pyoptim-compiled", "torch-fused-compiled"))
TRAIN_ROUNDS = (("pyoptim", "pyoptim-compiled", "torch-foreach-compiled"),
                ("pyoptim", "pyoptim-compiled", "torch-fused-compiled"))


# Per optimizer: the pyoptim module and its module-level op (the eager step's), and the
# registered op (what Inductor's code calls).
OPS = {"adamw": ("adam", "_adam_", "adam_"), "sgd": ("sgd", "_sgd_", "sgd_")}
NOOP = "/no-op"


def _noop(*args: object, **kwargs: object) -> None:
    return None


def _with_noop(owner: object, attr: str, fn: Callable[[], object]) -> Callable[[], object]:
    """fn, run with owner.attr (an op) replaced by a no-op."""
    real = getattr(owner, attr)

    def run() -> object:
        setattr(owner, attr, _noop)
        try:
            return fn()
        finally:
            setattr(owner, attr, real)

    return run


def floor_impls(opt: str, layers: int, width: int) -> tuple[dict, dict]:
    """The floor part: pyoptim eager and compiled, with and without the op's work."""
    steps, compile_s = step_impls(opt, layers, width, ("pyoptim", "pyoptim-compiled"))
    module_name, eager_attr, op_name = OPS[opt]
    module = importlib.import_module(f"pyoptim.{module_name}")
    packet = getattr(torch.ops.pyoptim, op_name)
    steps["pyoptim" + NOOP] = _with_noop(module, eager_attr, steps["pyoptim"])
    steps["pyoptim-compiled" + NOOP] = _with_noop(packet, "default", steps["pyoptim-compiled"])
    return steps, compile_s


def step_impls(opt: str, layers: int, width: int, impls: tuple[str, ...]) -> tuple[dict, dict]:
    """The step part: a zero-argument step per impl, and the compile times."""
    steps: dict[str, Callable[[], object]] = {}
    compile_s: dict[str, float] = {}
    for impl in impls:
        model = make_model(layers, width)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        o = make_opt(opt, impl, model)
        if impl.endswith("compiled"):
            steps[impl], compile_s[impl] = compiled(o.step)
        else:
            steps[impl] = o.step
    return steps, compile_s


def train_impls(opt: str, layers: int, width: int, impls: tuple[str, ...]) -> tuple[dict, dict]:
    """The train part: forward, backward, step, zero_grad, per impl."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, width, generator=g)
    y = torch.randn(BATCH, width, generator=g)
    steps: dict[str, Callable[[], object]] = {}
    compile_s: dict[str, float] = {}
    for impl in impls:
        model = make_model(layers, width)
        o = make_opt(opt, impl, model)

        def train(model=model, o=o) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            o.step()
            o.zero_grad()
            return loss

        if impl.endswith("compiled"):
            steps[impl], compile_s[impl] = compiled(train)
        else:
            steps[impl] = train
    return steps, compile_s


def report(title: str, steps: dict, compile_s: dict, cfg: BenchConfig) -> None:
    timings = harness.time_interleaved(steps, cfg)
    torch._dynamo.reset()  # the next part compiles from scratch (and not before: a reset
    # makes every compiled function of this part compile again at its next call)
    base = timings["pyoptim"].median
    print(f"\n{title}  (load average now {harness.load_average()})")
    print(f"  {'impl':24s} {'ms/step':>9s} {'IQR (ms)':>17s} {'n':>5s} {'vs pyoptim':>11s}"
          f" {'compile s':>10s}")
    for name, t in timings.items():
        iqr = f"{t.q1 * 1e3:.3f}..{t.q3 * 1e3:.3f}"
        comp = f"{compile_s[name]:.1f}" if name in compile_s else "-"
        print(f"  {name:24s} {t.median * 1e3:9.3f} {iqr:>17s} {len(t.samples):5d}"
              f" {t.median / base:10.2f}x {comp:>10s}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.compile_step",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, AdamW only, few repeats")
    ap.add_argument("--opt", action="append", choices=list(OPTS), help="default: all")
    ap.add_argument("--part", action="append", choices=["step", "train", "floor"],
                    help="default: all three")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: all CPUs)")
    ap.add_argument("--min-time", type=float, default=1.0, help="timed seconds per impl")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads or harness.default_threads())
    torch._inductor.config.force_disable_caches = True  # compile times from scratch
    # every impl of a part compiles the same code objects (torch's step wrapper) for its own
    # optimizer: room for all of them, so that none falls back to eager
    torch._dynamo.config.recompile_limit = 64
    cfg = BenchConfig(min_time=0.2 if args.quick else args.min_time, warmup=3,
                      min_reps=5 if args.quick else 20)
    models = QUICK_MODELS if args.quick else MODELS
    opts = args.opt or (["adamw"] if args.quick else list(OPTS))
    parts = args.part or ["step", "train", "floor"]
    print(f"torch {torch.__version__}, pyoptim {pyoptim.__version__} "
          f"({pyoptim.cpu_capability()}), {torch.get_num_threads()} threads, "
          f"{harness.cpu_model()}, load average {os.getloadavg()}", flush=True)
    for opt in opts:
        if "step" in parts:
            for name, (layers, width) in models.items():
                for impls in STEP_ROUNDS:
                    report(f"step/{opt}/{name}: opt.step() alone",
                           *step_impls(opt, layers, width, impls), cfg)
        if "floor" in parts:
            for name, (layers, width) in models.items():
                report(f"floor/{opt}/{name}: the step around its op (/no-op: the op call "
                       "a no-op, no update)", *floor_impls(opt, layers, width), cfg)
        if "train" in parts:
            name, (layers, width) = next(iter(models.items()))
            for impls in TRAIN_ROUNDS:
                report(f"train/{opt}/{name}: forward, backward, step, zero_grad (batch {BATCH})",
                       *train_impls(opt, layers, width, impls), cfg)
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
