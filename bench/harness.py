"""Timing, bandwidth probes and the Workload interface of `python -m bench`.

A workload module is any `bench/workloads_<name>.py` defining

    def workloads(cfg: BenchConfig) -> list[Workload]

It is found automatically (see `discover`). Each Workload names the impls to compare and, for
each, a `setup()` that allocates everything (params, grads preset once, optimizer) and returns a
zero-argument `step()` callable: the only thing timed. Sizes should follow `cfg.n(...)` so that
`--quick` and the smoke test stay small. See bench/README.md for a ten-line example.

Timing (CPU): every impl of a workload is set up, warmed up, then timed in interleaved rounds
(a block of ~`cfg.block_time` seconds per impl per round), each step timed on its own with
time.perf_counter, until every impl has `cfg.min_reps` samples and `cfg.min_time` seconds of
them (or `cfg.max_reps`). Slow impls thus get few repeats, fast ones many, and load from other
processes falls on all impls alike. We report the median and the interquartile range.

Timing (CUDA): the same rounds, but each step is bracketed by CUDA events, and the L2 cache is
flushed (a buffer of twice its size is zeroed) before each step, outside the events, so every
step starts cold as a real training step does after the backward pass.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import pkgutil
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import bytes as nbytes

StepFn = Callable[[], None]
SetupFn = Callable[[], StepFn]


# ---------------------------------------------------------------------------------------------
# Configuration and the workload interface


@dataclass
class BenchConfig:
    device: str = "cpu"
    scale: float = 1.0  # multiplies element counts (workloads call cfg.n); --quick uses 1/64
    min_time: float = 1.0  # seconds of timed steps per impl, at least
    min_reps: int = 5
    max_reps: int = 500
    warmup: int = 2  # untimed steps per impl before timing (the first one creates the state)
    block_time: float = 0.1  # seconds per impl per interleaved round
    quick: bool = False

    def n(self, numel: int, minimum: int = 1) -> int:
        """A workload size, scaled for --quick / tests."""
        return max(minimum, int(numel * self.scale))


@dataclass
class Workload:
    """One benchmark case: several impls of the same update on the same data.

    name:            unique, "<group>/<what>", e.g. "adam/fp32-1x64M"; --filter matches it
    group:           the optimizer ("adam", "adamw", "sgd", ...)
    numel:           parameter elements updated per step (all tensors)
    n_tensors:       how many parameter tensors
    bytes_per_step:  minimum memory traffic of one step (bench/bytes.py): gives GB/s
    impls:           impl name -> setup(); setup() builds everything, returns the timed step()
    baseline:        the impl the ratio column divides by (ratio = t_impl / t_baseline, so
                     >1 means the baseline, pyoptim, is faster)
    targets:         optional goals printed after the table (not tests): impl name -> minimum
                     ratio, or "%probe" -> minimum % of the 4R/3W probe reached by the baseline
    cleanup:         optional; called after the workload ran, to drop data its setups share
                     (e.g. gradients cached for all impls)
    """

    name: str
    group: str
    numel: int
    n_tensors: int
    bytes_per_step: int
    impls: dict[str, SetupFn]
    baseline: str = "pyoptim"
    description: str = ""
    targets: dict[str, float] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


@dataclass
class Timing:
    samples: list[float]  # seconds per step

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def total(self) -> float:
        return sum(self.samples)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def discover(cfg: BenchConfig) -> list[Workload]:
    """Every Workload of every bench/workloads_*.py module, in module-name order."""
    import bench

    out: list[Workload] = []
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))
    for name in names:
        if name.startswith("workloads_"):
            mod = importlib.import_module(f"bench.{name}")
            out.extend(mod.workloads(cfg))
    seen = set()
    for w in out:
        if w.name in seen:
            raise ValueError(f"two workloads are named {w.name!r}")
        seen.add(w.name)
    return out


# ---------------------------------------------------------------------------------------------
# Timers


class CpuTimer:
    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg

    def sync(self) -> None:
        pass

    def run(self, step: StepFn, k: int) -> list[float]:
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        return out


class CudaTimer:
    """Per-step CUDA events, with an L2 flush before each step (outside the events)."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        self.flush_buf = torch.empty(2 * l2, dtype=torch.int8, device="cuda")

    def sync(self) -> None:
        torch.cuda.synchronize()

    def run(self, step: StepFn, k: int) -> list[float]:
        events = []
        for _ in range(k):
            self.flush_buf.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in events]


def make_timer(cfg: BenchConfig):
    if cfg.device == "cpu":
        return CpuTimer(cfg)
    if cfg.device == "cuda":
        return CudaTimer(cfg)
    raise ValueError(f"unknown device {cfg.device!r} (expected cpu or cuda)")


def time_interleaved(
    steps: dict[str, StepFn], cfg: BenchConfig, timer=None, light: Sequence[str] = ()
) -> dict[str, Timing]:
    """Time every step() in interleaved rounds (see the module docstring). Steps named in
    `light` (the probe riding along with a workload) stop at 3 samples and min_time / 4."""
    timer = timer or make_timer(cfg)
    est: dict[str, float] = {}
    for name, step in steps.items():
        timer.run(step, max(0, cfg.warmup - 1))
        timer.sync()
        est[name] = max(timer.run(step, 1)[0], 1e-7)  # the last warmup step gives an estimate
    samples: dict[str, list[float]] = {name: [] for name in steps}

    def done(name: str) -> bool:
        s = samples[name]
        if name in light:
            return len(s) >= cfg.max_reps or (len(s) >= 3 and sum(s) >= cfg.min_time / 4)
        return len(s) >= cfg.max_reps or (len(s) >= cfg.min_reps and sum(s) >= cfg.min_time)

    while not all(done(name) for name in steps):
        for name, step in steps.items():
            if done(name):
                continue
            k = max(1, min(int(cfg.block_time / est[name]), cfg.max_reps - len(samples[name])))
            if est[name] < cfg.block_time / 20:
                timer.run(step, 1)  # cheap step: re-warm caches after the other impls' blocks
            got = timer.run(step, k)
            samples[name].extend(got)
            est[name] = statistics.median(got)
    return {name: Timing(samples[name]) for name in steps}


# ---------------------------------------------------------------------------------------------
# Bandwidth probes


@dataclass
class Probe:
    name: str
    numel: int
    bytes_per_step: int
    timing: Timing

    @property
    def gbps(self) -> float:
        return self.bytes_per_step / self.timing.median / 1e9


def has_kernel(op: str, device: str) -> bool:
    """Whether this build of pyoptim registered a kernel of `pyoptim::<op>` for the device."""
    import pyoptim  # noqa: F401  (registers torch.ops.pyoptim.*)

    key = "CPU" if device == "cpu" else "CUDA"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pyoptim::{op}", key)


def has_native_probe(device: str) -> bool:
    return has_kernel("_stream_probe_", device)


class ReferenceProbe:
    """The probe that %probe divides by: `stream-4r3w` (native, Adam's pattern) where the device
    has it, else the copy. Its arrays live as long as this object, so it can also be timed
    inside each workload's rounds (run_workload): %probe then compares numbers measured in the
    same seconds, under the same background load."""

    def __init__(self, numel: int, cfg: BenchConfig):
        dev = cfg.device
        self.numel = numel
        self.arrays = [torch.rand(numel, device=dev) for _ in range(4)]
        x, y, z, g = self.arrays
        self.steps: dict[str, StepFn] = {}
        self.bytes: dict[str, int] = {}
        if has_native_probe(dev):
            op = torch.ops.pyoptim._stream_probe_.default
            self.steps["stream-4r3w"] = lambda: op(x, y, z, g)
            self.bytes["stream-4r3w"] = nbytes.stream_probe_bytes(numel)
        self.steps["torch-copy-1r1w"] = lambda: x.copy_(g)
        self.bytes["torch-copy-1r1w"] = nbytes.copy_probe_bytes(numel)
        self.name = next(iter(self.steps))  # the reference: stream-4r3w when there is one

    def run_all(self, cfg: BenchConfig) -> dict[str, Probe]:
        """Every probe, timed on its own (interleaved with each other) at the start of a run."""
        timings = time_interleaved(self.steps, cfg)
        return {k: Probe(k, self.numel, self.bytes[k], t) for k, t in timings.items()}

    def gbps(self, t: Timing) -> float:
        return self.bytes[self.name] / t.median / 1e9


# ---------------------------------------------------------------------------------------------
# Running a workload


@dataclass
class Row:
    impl: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    n: int
    ratio: float | None  # t_impl / t_baseline
    gbps: float
    pct_probe: float | None


PROBE_KEY = "(probe)"


def run_workload(
    w: Workload, cfg: BenchConfig, probe: ReferenceProbe | None = None
) -> tuple[list[Row], float | None]:
    """Time every impl of `w`, with the reference probe (if given) in the same rounds.
    Returns the rows and the probe's GB/s measured alongside (None without a probe)."""
    steps = {name: setup() for name, setup in w.impls.items()}
    if probe is not None:
        steps[PROBE_KEY] = probe.steps[probe.name]
    try:
        timings = time_interleaved(steps, cfg, light=(PROBE_KEY,))
    finally:
        del steps
        if w.cleanup is not None:
            w.cleanup()
        gc.collect()
    probe_gbps = probe.gbps(timings.pop(PROBE_KEY)) if probe is not None else None
    base = timings.get(w.baseline)
    rows = []
    for name, t in timings.items():
        gbps = w.bytes_per_step / t.median / 1e9
        rows.append(
            Row(
                impl=name,
                median_ms=t.median * 1e3,
                q1_ms=t.q1 * 1e3,
                q3_ms=t.q3 * 1e3,
                n=len(t.samples),
                ratio=(t.median / base.median) if base else None,
                gbps=gbps,
                pct_probe=(100.0 * gbps / probe_gbps) if probe_gbps else None,
            )
        )
    return rows, probe_gbps


def row_dict(r: Row) -> dict:
    return dataclasses.asdict(r)


# ---------------------------------------------------------------------------------------------
# Machine


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """1-minute load average (None where unknown): other processes' share of the CPUs."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(cfg: BenchConfig) -> dict:
    import pyoptim

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pyoptim": getattr(pyoptim, "__version__", "?"),
        "pyoptim_cpu_capability": pyoptim.cpu_capability(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "device": cfg.device,
        "loadavg_1m": load_average(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cfg.device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_l2_bytes"] = getattr(props, "L2_cache_size", None)
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------------------------
# Results


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(res: dict, latest: str | None, extra: str | None,
                  out: Callable[[str], None]) -> None:
    """`res` as JSON to bench/results/<latest> (None: not there) and to `extra` (a path)."""
    paths = [os.path.join(RESULTS_DIR, latest)] if latest else []
    if extra:
        paths.append(extra)
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        out(f"wrote {path}")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or exit with the install hint (--plot options)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    return plt
