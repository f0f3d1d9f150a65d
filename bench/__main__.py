"""`python -m bench`: pyoptim vs torch.optim, all impls side by side, in one run.

    python -m bench                      # the default run (CPU, < 5 minutes on 2 cores)
    python -m bench --quick              # tiny sizes, few repeats: a smoke run
    python -m bench --filter 'adamw/.*64M' --repeat 20
    python -m bench --compare bench/results/old.json     # run, then ratios old/new
    python -m bench --compare old.json --against new.json  # no run: just compare two files
    python -m bench --device cuda        # GPU run (CUDA events, L2 flush): make bench-gpu
    python -m bench --list --device cuda # the GPU workloads (listing needs no GPU)
    python -m bench --isa all            # pyoptim also at every other CPU level (pyoptim@avx2, ...)

See bench/README.md for the columns and for adding workloads.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence

import torch

from . import harness
from .harness import BenchConfig, Row, Workload

M = 2**20
RESULTS_DIR = harness.RESULTS_DIR
# as large as the biggest dense workload of the device: far beyond any cache
PROBE_NUMEL = {"cpu": 64 * M, "cuda": 256 * M}
# what a --device cuda run calls
CUDA_OPS = ("adam_", "sgd_", "sparse_adam_", "adamax_", "adagrad_", "sparse_adagrad_",
            "rowwise_adagrad_")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    ap.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="REGEX",
        help="run only workloads whose name matches (re.search); repeatable, any may match",
    )
    ap.add_argument("--repeat", type=int, help="at least this many timed steps per impl")
    ap.add_argument("--min-time", type=float, help="at least this many timed seconds per impl")
    ap.add_argument("--scale", type=float, help="multiply workload sizes by this (tests)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: all CPUs)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    ap.add_argument(
        "--no-latest", action="store_true", help="don't write bench/results/latest.json"
    )
    ap.add_argument("--no-probe", action="store_true", help="skip the bandwidth probes")
    ap.add_argument(
        "--isa",
        choices=["default", "all"],
        default="default",
        help="all: also time each pyoptim impl at every other CPU level this CPU runs, as "
        "pyoptim@<level> rows next to the default level's (CPU only)",
    )
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--compare", metavar="OLD.json", help="print ratios between OLD and this run")
    ap.add_argument(
        "--against", metavar="NEW.json", help="with --compare: compare to this file, no run"
    )
    return ap.parse_args(argv)


def make_config(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig(device=args.device)
    if args.quick:
        cfg.quick = True
        cfg.scale = 1 / 64
        cfg.min_time = 0.05
        cfg.min_reps = 3
        cfg.warmup = 1
        cfg.block_time = 0.02
    if args.scale is not None:
        cfg.scale = args.scale
    if args.repeat is not None:
        cfg.min_reps = args.repeat
        cfg.max_reps = max(cfg.max_reps, args.repeat)
    if args.min_time is not None:
        cfg.min_time = args.min_time
    return cfg


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        reason = (
            "torch was built without CUDA"
            if torch.version.cuda is None
            else "no CUDA device is visible (torch.cuda.is_available() is False)"
        )
        sys.exit(f"python -m bench --device cuda: {reason}. Run it on a GPU machine.")
    if device == "cuda":
        missing = [op for op in CUDA_OPS if not harness.has_kernel(op, "cuda")]
        if missing:
            sys.exit(
                "python -m bench --device cuda: this pyoptim build has no CUDA kernels for "
                f"{', '.join('pyoptim::' + op for op in missing)}; rebuild it where nvcc is found "
                "(PYOPTIM_CUDA=1 makes a CPU-only build an error)."
            )


# ---------------------------------------------------------------------------------------------
# Printing


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def format_table(w: Workload, rows: list[Row], probe_gbps: float | None = None) -> str:
    width = max([15, *(len(r.impl) for r in rows)])
    lines = [
        f"{w.name}: {w.description}, {w.numel / 1e6:.2f}M elements, "
        f"{w.bytes_per_step / w.numel:g} B/elem = {w.bytes_per_step / 1e9:.3f} GB/step"
        + (f"; probe alongside: {probe_gbps:.1f} GB/s" if probe_gbps else ""),
        f"  {'impl':<{width}} {'ms/step':>9} {'IQR (ms)':>17} {'n':>5} "
        f"{'ratio':>7} {'GB/s':>7} {'%probe':>7}",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        pct = f"{r.pct_probe:.0f}%" if r.pct_probe is not None else "-"
        iqr = f"{_ms(r.q1_ms)}..{_ms(r.q3_ms)}"
        lines.append(
            f"  {r.impl:<{width}} {_ms(r.median_ms):>9} {iqr:>17} {r.n:>5} {ratio:>7} "
            f"{r.gbps:>7.1f} {pct:>7}"
        )
    lines += format_targets(w, rows)
    return "\n".join(lines)


def format_targets(w: Workload, rows: list[Row]) -> list[str]:
    by = {r.impl: r for r in rows}
    base = by.get(w.baseline)
    if base is None or not w.targets:
        return []
    out = []
    for key, goal in w.targets.items():
        if key == "%probe":
            if base.pct_probe is None:
                continue
            got, what = base.pct_probe, f"{w.baseline} >= {goal:g}% of probe"
            out.append(f"  target {what}: {'met' if got >= goal else 'MISSED'} ({got:.0f}%)")
        elif key in by and by[key].ratio is not None:
            got = by[key].ratio
            what = f"{w.baseline} >= {goal:g}x faster than {key}"
            out.append(f"  target {what}: {'met' if got >= goal else 'MISSED'} ({got:.2f}x)")
    return out


def format_compare(old: dict, new: dict) -> str:
    """Per (workload, impl) in both files: old ms, new ms, old/new (>1: faster now), and the
    ratio column of each run."""
    def index(res):
        return {
            (w["name"], r["impl"]): r for w in res.get("workloads", []) for r in w["rows"]
        }

    a, b = index(old), index(new)
    lines = [
        f"compare: old = {old.get('machine', {}).get('time_utc', '?')}, "
        f"new = {new.get('machine', {}).get('time_utc', '?')}",
        f"  {'workload':<34} {'impl':<15} {'old ms':>9} {'new ms':>9} {'old/new':>8} "
        f"{'ratio old':>9} {'ratio new':>9}",
    ]
    for key in b:
        if key not in a:
            continue
        ro, rn = a[key], b[key]
        speed = ro["median_ms"] / rn["median_ms"]
        fo = f"{ro['ratio']:.2f}x" if ro.get("ratio") is not None else "-"
        fn = f"{rn['ratio']:.2f}x" if rn.get("ratio") is not None else "-"
        lines.append(
            f"  {key[0]:<34} {key[1]:<15} {_ms(ro['median_ms']):>9} {_ms(rn['median_ms']):>9} "
            f"{speed:>7.2f}x {fo:>9} {fn:>9}"
        )
    only = sorted(set(a) ^ set(b))
    if only:
        lines.append(f"  ({len(only)} rows in only one of the two runs, not shown)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def add_isa_levels(w: Workload) -> None:
    """--isa all: next to each pyoptim impl, the same impl at every other level this CPU can
    run (pyoptim@scalar, ...), so a regression at a lower level shows in the same run."""
    from pyoptim import _ops

    others = [lv for lv in _ops.available_cpu_capabilities() if lv != _ops.cpu_capability()]
    for name, setup in list(w.impls.items()):
        if name.startswith("pyoptim"):
            for level in others:
                w.impls[f"{name}@{level}"] = _at_level(setup, level)


def _at_level(setup: harness.SetupFn, level: str) -> harness.SetupFn:
    from pyoptim import _ops

    def at_level():
        step = setup()

        def run():
            with _ops.cpu_capability_override(level):
                step()

        return run

    return at_level


def run(args: argparse.Namespace, out=print) -> dict:
    if not args.list:  # listing builds no tensors: it needs no GPU
        check_device(args.device)
    cfg = make_config(args)
    torch.set_num_threads(args.threads or harness.default_threads())
    torch.manual_seed(0)

    workloads = harness.discover(cfg)
    if args.filter:
        pats = [re.compile(f) for f in args.filter]
        workloads = [w for w in workloads if any(p.search(w.name) for p in pats)]
    if args.isa == "all" and cfg.device == "cpu":
        for w in workloads:
            add_isa_levels(w)
    if args.list:
        for w in workloads:
            out(f"{w.name:<36} {', '.join(w.impls)}")
        return {}

    t_start = time.perf_counter()
    info = harness.machine_info(cfg)
    out(
        f"pyoptim bench: device={cfg.device}, {info['cpu_model']}, "
        f"threads={info['threads']} (torch.set_num_threads), torch {info['torch']}, "
        f"pyoptim cpu_capability={info['pyoptim_cpu_capability']}"
        + (f", gpu={info['gpu']}" if "gpu" in info else "")
        + (" [quick]" if cfg.quick else "")
    )
    load = info["loadavg_1m"]
    if load is not None and cfg.device == "cpu":
        busy = load > info["threads"]
        out(
            f"load average (1 min) at start: {load:.2f}"
            + (
                f" > {info['threads']} threads: other processes compete for the cores. Impls "
                "that open many parallel regions per step (torch for-loop/foreach/fused over many "
                "tensors) suffer most, which inflates their ratios; rerun on an idle machine or "
                "with --threads 1 to confirm."
                if busy
                else ""
            )
        )
    out(
        f"timing: warmup {cfg.warmup}, then interleaved rounds until >= {cfg.min_reps} steps and "
        f">= {cfg.min_time:g} s per impl (max {cfg.max_reps}); median and IQR of single steps"
    )

    probes = {}
    probe = None
    if not args.no_probe:
        probe = harness.ReferenceProbe(cfg.n(PROBE_NUMEL[cfg.device], minimum=1024), cfg)
        probes = probe.run_all(cfg)
        for p in probes.values():
            out(
                f"probe {p.name:<16} {p.numel / 1e6:.1f}M fp32 elems/array: "
                f"{p.timing.median * 1e3:.2f} ms, {p.gbps:.1f} GB/s"
            )
        out(
            f"%probe: vs {probe.name}, re-measured inside each workload's rounds (same load)"
            + ("" if probe.name == "stream-4r3w" else "; no native 4R/3W probe on this device")
        )

    results = []
    for w in workloads:
        out("")
        rows, probe_gbps = harness.run_workload(w, cfg, probe)
        out(format_table(w, rows, probe_gbps))
        results.append(
            {
                "name": w.name,
                "group": w.group,
                "description": w.description,
                "numel": w.numel,
                "n_tensors": w.n_tensors,
                "bytes_per_step": w.bytes_per_step,
                "baseline": w.baseline,
                "targets": w.targets,
                "probe_gbps": probe_gbps,
                "rows": [harness.row_dict(r) for r in rows],
            }
        )
    probe_name = probe.name if probe else None
    del probe  # frees its arrays before the JSON is written
    wall = time.perf_counter() - t_start
    load_end = harness.load_average()
    tail = f", load average (1 min) at end: {load_end:.2f}" if load_end is not None else ""
    out(f"\ntotal wall time: {wall:.1f} s{tail}")

    res = {
        "machine": info,
        "config": {k: v for k, v in vars(cfg).items()},
        "probes": {
            k: {
                "numel": p.numel,
                "bytes_per_step": p.bytes_per_step,
                "median_ms": p.timing.median * 1e3,
                "gbps": p.gbps,
            }
            for k, p in probes.items()
        },
        "probe_for_pct": probe_name,
        "wall_s": wall,
        "loadavg_1m_end": load_end,
        "workloads": results,
    }
    harness.write_results(res, None if args.no_latest else "latest.json", args.json, out)
    return res


def main(argv: Sequence[str] | None = None, out=print) -> dict:
    args = parse_args(argv)
    if args.against and not args.compare:
        sys.exit("--against needs --compare OLD.json")
    old = None
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
    if args.against:
        with open(args.against) as f:
            out(format_compare(old, json.load(f)))
        return {}
    res = run(args, out)
    if old is not None and res:
        out("")
        out(format_compare(old, res))
    return res


if __name__ == "__main__":
    main()
