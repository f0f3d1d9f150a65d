"""`python -m bench.sparse_curves`: the sparse optimizers' speed as curves, not one point.

    python -m bench.sparse_curves                     # CPU, table 1M x width, float32
    python -m bench.sparse_curves --plot curves.png   # and a PNG (needs matplotlib)
    python -m bench.sparse_curves --quick             # tiny sizes: a smoke run
    python -m bench.sparse_curves --only sparse_adam --dist zipf   # (names: sparse_adam, sgd,
                                                                  # adagrad, rowwise_adagrad)

Two sweeps per optimizer and index distribution (uniform, Zipf(1.2) as in the main bench):
  lookups   8k, 16k, ..., 512k lookups per step into a 1M x 128 table
  width     16, 32, ..., 256 wide rows, 65,536 lookups per step
Each point times pyoptim's step and torch's (where torch steps sparse gradients) on the same
uncoalesced gradient from nn.Embedding(sparse=True), interleaved with the 4R/3W probe
(harness.run_workload), and reports ms/step, GB/s of the bytes the update must move
(bench/bytes.py) and % of the probe measured alongside. Results go to
bench/results/sparse_curves.json (and --json PATH).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import pyoptim

from . import harness
from .__main__ import PROBE_NUMEL
from .bytes import rowwise_adagrad_bytes, sparse_adagrad_bytes, sparse_adam_bytes, sparse_sgd_bytes
from .harness import BenchConfig, SetupFn, Workload
from .workloads_sparse_adam import _indices, _shared

ROWS = 2**20
LOOKUPS = [8192 * 2**k for k in range(7)]  # 8k .. 512k
WIDTHS = [16, 32, 64, 128, 256]
BASE_WIDTH = 128
BASE_LOOKUPS = 65536
ZIPF_S = 1.2


@dataclass
class SparseOpt:
    """One sparse optimizer of the curves: its bytes per step and its impls."""

    name: str
    bytes_fn: Callable[[int, int, int], int]  # (unique rows, nnz, width) -> bytes per step
    impls: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]


def optimizers() -> list[SparseOpt]:
    out = [
        SparseOpt("sparse_adam", sparse_adam_bytes, {
            "pyoptim": lambda ps: pyoptim.SparseAdam(ps, lr=1e-3),
            "torch": lambda ps: torch.optim.SparseAdam(ps, lr=1e-3),
        }),
        SparseOpt("sgd", sparse_sgd_bytes, {
            "pyoptim": lambda ps: pyoptim.SGD(ps, lr=1e-3),
            "torch": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=False),
        }),
        SparseOpt("adagrad", sparse_adagrad_bytes, {
            "pyoptim": lambda ps: pyoptim.Adagrad(ps, lr=1e-3),
            "torch": lambda ps: torch.optim.Adagrad(ps, lr=1e-3),
        }),
        SparseOpt("rowwise_adagrad", rowwise_adagrad_bytes, {  # torch has no row-wise Adagrad
            "pyoptim": lambda ps: pyoptim.RowWiseAdagrad(ps, lr=1e-3),
        }),
    ]
    return out


def _setup(make: Callable, shared) -> SetupFn:
    def setup():
        c = shared()
        p = torch.nn.Parameter(c["weight"].clone())
        p.grad = c["grad"]
        return make([p]).step

    return setup


def point(opt: SparseOpt, dist: str, n_rows: int, width: int, lookups: int) -> Workload:
    idx = _indices(dist, n_rows, lookups, ZIPF_S)
    unique = int(idx.unique().numel())
    shared = _shared(n_rows, width, idx, "cpu")  # the main bench's gradient, made once
    return Workload(
        name=f"{opt.name}/{dist}/w{width}-n{lookups}",
        group=opt.name,
        numel=unique * width,
        n_tensors=1,
        bytes_per_step=opt.bytes_fn(unique, lookups, width),
        impls={k: _setup(make, shared) for k, make in opt.impls.items()},
        description=f"{opt.name}, {n_rows}x{width} fp32, {lookups} {dist} lookups "
                    f"({unique} unique rows)",
        cleanup=shared.cleanup,
    )


def sweeps(cfg: BenchConfig) -> list[tuple[str, int, int]]:
    """(sweep, width, lookups) of every point, sizes scaled by cfg."""
    pts = [("lookups", BASE_WIDTH, cfg.n(n, minimum=64)) for n in LOOKUPS]
    pts += [("width", w, cfg.n(BASE_LOOKUPS, minimum=64)) for w in WIDTHS]
    return pts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.sparse_curves",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats")
    ap.add_argument("--only", action="append", default=[], help="optimizer name (repeatable)")
    ap.add_argument("--dist", action="append", choices=["uniform", "zipf"], default=[])
    ap.add_argument("--min-time", type=float, default=0.5, help="timed seconds per impl")
    ap.add_argument("--scale", type=float, help="multiply the sizes by this (tests)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: all CPUs)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    ap.add_argument("--no-latest", action="store_true",
                    help="don't write bench/results/sparse_curves.json")
    ap.add_argument("--plot", metavar="PNG", help="draw %%probe and speed-up curves here")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, out=print) -> dict:
    cfg = BenchConfig(device="cpu", min_time=args.min_time, block_time=0.05)
    if args.quick:
        cfg.quick, cfg.scale, cfg.min_time, cfg.min_reps, cfg.warmup = True, 1 / 64, 0.02, 3, 1
    if args.scale is not None:
        cfg.scale = args.scale
    torch.set_num_threads(args.threads or harness.default_threads())
    info = harness.machine_info(cfg)
    out(f"sparse curves: {info['cpu_model']}, threads={info['threads']}, torch {info['torch']}, "
        f"pyoptim cpu_capability={info['pyoptim_cpu_capability']}, load average (1 min) "
        f"{info['loadavg_1m']}" + (" [quick]" if cfg.quick else ""))
    probe = harness.ReferenceProbe(cfg.n(PROBE_NUMEL["cpu"], minimum=1024), cfg)
    n_rows = cfg.n(ROWS, minimum=1024)
    opts = [o for o in optimizers() if not args.only or o.name in args.only]
    dists = args.dist or ["uniform", "zipf"]
    t0 = time.perf_counter()
    points = []
    for opt in opts:
        for dist in dists:
            out(f"\n{opt.name}, {dist}: {'sweep':<8} {'width':>5} {'lookups':>7} "
                f"{'pyoptim ms':>10} {'%probe':>6} {'torch ms':>9} {'speed-up':>8}")
            for sweep, width, lookups in sweeps(cfg):
                w = point(opt, dist, n_rows, width, lookups)
                rows, probe_gbps = harness.run_workload(w, cfg, probe)
                by = {r.impl: r for r in rows}
                mine, theirs = by["pyoptim"], by.get("torch")
                points.append(dict(
                    optimizer=opt.name, dist=dist, sweep=sweep, width=width, lookups=lookups,
                    rows=n_rows, bytes_per_step=w.bytes_per_step, probe_gbps=probe_gbps,
                    impls={r.impl: harness.row_dict(r) for r in rows}))
                tms = f"{theirs.median_ms:9.3f} {theirs.ratio:7.2f}x" if theirs else \
                    f"{'-':>9} {'-':>8}"
                out(f"{'':<{len(opt.name) + len(dist) + 4}}{sweep:<8} {width:>5} {lookups:>7} "
                    f"{mine.median_ms:10.3f} {mine.pct_probe:5.0f}% {tms}")
    res = {"machine": info, "wall_s": time.perf_counter() - t0,
           "loadavg_1m_end": harness.load_average(), "points": points}
    out(f"\ntotal wall time: {res['wall_s']:.1f} s, load average (1 min) at end: "
        f"{res['loadavg_1m_end']}")
    harness.write_results(res, None if args.no_latest else "sparse_curves.json", args.json, out)
    if args.plot:
        plot(res, args.plot)
        out(f"wrote {args.plot}")
    return res


def plot(res: dict, path: str) -> None:
    """Two rows of panels: % of the probe (pyoptim), and speed-up over torch; lookups sweep on
    the left, width sweep on the right; one line per optimizer and distribution."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    series: dict[tuple[str, str, str], list[dict]] = {}
    for p in res["points"]:
        series.setdefault((p["optimizer"], p["dist"], p["sweep"]), []).append(p)
    for (opt, dist, sweep), pts in sorted(series.items()):
        col = 0 if sweep == "lookups" else 1
        xs = [p["lookups"] if sweep == "lookups" else p["width"] for p in pts]
        style = "-" if dist == "uniform" else "--"
        label = f"{opt} ({dist})"
        axes[0][col].plot(xs, [p["impls"]["pyoptim"]["pct_probe"] for p in pts], style,
                          marker="o", label=label)
        if all("torch" in p["impls"] for p in pts):
            axes[1][col].plot(xs, [p["impls"]["torch"]["ratio"] for p in pts], style,
                              marker="o", label=label)
    m = res["machine"]
    for col, what in enumerate(("lookups per step (width 128)",
                                "embedding width (65,536 lookups)")):
        for row in range(2):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel(what)
            ax.grid(True, alpha=0.3)
        axes[0][col].axhline(75, color="grey", lw=0.8, ls=":")
    axes[0][0].set_ylabel("pyoptim, % of the 4R/3W probe")
    axes[1][0].set_ylabel("speed-up over torch (x)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"pyoptim sparse steps, {m['cpu_model']}, {m['threads']} threads, "
                 f"torch {m['torch']}, load {m['loadavg_1m']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: Sequence[str] | None = None, out=print) -> dict:
    return run(parse_args(argv), out)


if __name__ == "__main__":
    main()
