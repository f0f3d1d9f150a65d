"""Adam and AdamW workloads: pyoptim vs torch.optim's for-loop, foreach and fused steps.

Each shape runs for Adam and AdamW with default hyper-parameters (AdamW: weight_decay=1e-2).

CPU (torch-forloop, torch-foreach, torch-fused, pyoptim):
  fp32-1x64M          one float32 tensor of 64M elements (pure streaming)
  fp32-transformer    196 float32 tensors, 25.3M elements: a 16-layer d=320 transformer
  fp32-1000x1k        1000 float32 tensors of 1024 elements (per-tensor overhead)
  bf16-1x64M          one bfloat16 tensor of 64M elements (state in bfloat16 too, like torch)

CUDA (torch-foreach, torch-fused, pyoptim, pyoptim-fused; torch's for-loop is left out: it is
nobody's choice on a GPU and costs seconds per step over 10,000 tensors):
  fp32-1x256M         one float32 tensor of 256M elements (bandwidth-bound)
  fp32-transformer    194 float32 tensors, 28.3M elements: 16 layers of d=384, no embeddings
  fp32-10000-tiny     10,000 float32 tensors of 1..1024 elements (launch- and host-bound)
pyoptim-fused is pyoptim with fused=True: the step counts live on the GPU, as with torch's fused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

import pyoptim

from .bytes import adam_bytes_per_elem
from .harness import BenchConfig, SetupFn, Workload

M = 2**20

IMPLS = {
    "torch-forloop": dict(foreach=False),
    "torch-foreach": dict(foreach=True),
    "torch-fused": dict(fused=True),
}


def transformer_shapes(
    d: int, layers: int, vocab: int = 0, ctx: int = 0
) -> list[tuple[int, ...]]:
    """A GPT-like parameter list: token and position embeddings (left out when vocab and ctx
    are 0), then per layer ln1, qkv, out, ln2, mlp fc1, fc2 (each a weight and a bias: 12
    tensors), then the final layernorm."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)] if vocab or ctx else []
    for _ in range(layers):
        shapes += [(d,), (d,)]  # ln1 weight, bias
        shapes += [(3 * d, d), (3 * d,)]  # qkv
        shapes += [(d, d), (d,)]  # attention out
        shapes += [(d,), (d,)]  # ln2 weight, bias
        shapes += [(4 * d, d), (4 * d,)]  # mlp fc1
        shapes += [(d, 4 * d), (d,)]  # mlp fc2
    shapes += [(d,), (d,)]  # final layernorm
    return shapes


def _make_setup(opt_cls: Callable, kwargs: dict, data: Callable) -> SetupFn:
    def setup():
        params = []
        for base, g in zip(*data()):
            p = base.clone()  # each impl updates its own copy of the same initial values
            p.grad = g  # shared, read-only: no impl writes grads (maximize=False)
            params.append(p)
        opt = opt_cls(params, **kwargs)
        return opt.step

    return setup


def _shared_data(shapes, dtype, device):
    """Initial params and grads, made once per workload (on first use) and shared by its impls
    (randn of 64M elements is slower than a clone). `get.cleanup` drops them."""
    cache: dict[str, tuple] = {}

    def get():
        if "d" not in cache:
            gen = torch.Generator(device="cpu").manual_seed(0)
            params = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
            grads = [
                (torch.randn(s, generator=gen) * 1e-2).to(device=device, dtype=dtype)
                for s in shapes
            ]
            cache["d"] = (params, grads)
        return cache["d"]

    get.cleanup = cache.clear
    return get


def tiny_shapes(count: int) -> list[tuple[int, ...]]:
    """`count` 1-d shapes of 1..1024 elements, the same list on every run."""
    gen = torch.Generator().manual_seed(0)
    return [(int(n),) for n in torch.randint(1, 1025, (count,), generator=gen)]


def _fmt(n: int) -> str:
    """A size in a workload name, in binary units: 67108864 -> 64M, 1024 -> 1k."""
    for unit, div in (("M", M), ("k", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def _fmt_dec(n: int) -> str:
    """A size in a workload name, in decimal units: 10000000 -> 10M, 1000 -> 1k."""
    for unit, div in (("M", 10**6), ("k", 10**3)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def cpu_cases(cfg: BenchConfig) -> list[tuple]:
    """(name, shapes, dtype, targets) of the CPU workloads."""
    big = cfg.n(64 * M, minimum=1024)
    s = math.sqrt(cfg.scale)
    d = max(16, int(round(320 * s / 16)) * 16)
    tshapes = transformer_shapes(d, layers=16, vocab=max(64, int(16000 * s)), ctx=512)
    small = cfg.n(1024, minimum=16)
    return [
        (f"fp32-1x{_fmt(big)}", [(big,)], torch.float32, {"%probe": 95.0, "torch-forloop": 5.0}),
        (
            f"fp32-transformer-{len(tshapes)}t",
            tshapes,
            torch.float32,
            {"%probe": 95.0, "torch-forloop": 5.0},
        ),
        (
            f"fp32-1000x{_fmt(small)}",
            [(small,)] * 1000,
            torch.float32,
            {"torch-fused": 5.0, "torch-forloop": 5.0},
        ),
        (
            f"bf16-1x{_fmt(big)}",
            [(big,)],
            torch.bfloat16,
            {"torch-fused": 1.5, "torch-forloop": 5.0},
        ),
    ]


def cuda_cases(cfg: BenchConfig) -> list[tuple]:
    """(name, shapes, dtype, targets) of the CUDA workloads (the issues set no GPU targets)."""
    big = cfg.n(256 * M, minimum=1024)
    d = max(16, int(round(384 * math.sqrt(cfg.scale) / 16)) * 16)
    tshapes = transformer_shapes(d, layers=16)
    n_tiny = cfg.n(10000, minimum=16)
    return [
        (f"fp32-1x{_fmt(big)}", [(big,)], torch.float32, {}),
        (f"fp32-transformer-{len(tshapes)}t", tshapes, torch.float32, {}),
        (f"fp32-{n_tiny}-tiny", tiny_shapes(n_tiny), torch.float32, {}),
    ]


CUDA_TORCH_IMPLS = {k: v for k, v in IMPLS.items() if k != "torch-forloop"}


def workloads(cfg: BenchConfig) -> list[Workload]:
    dev = cfg.device
    cuda = dev == "cuda"
    cases = cuda_cases(cfg) if cuda else cpu_cases(cfg)
    groups = [("adam", torch.optim.Adam, pyoptim.Adam), ("adamw", torch.optim.AdamW, pyoptim.AdamW)]
    out = []
    for group, torch_cls, py_cls in groups:
        for what, shapes, dtype, targets in cases:
            numel = sum(math.prod(sh) for sh in shapes)
            data = _shared_data(shapes, dtype, dev)
            impls: dict[str, SetupFn] = {
                name: _make_setup(torch_cls, dict(lr=1e-3, **kw), data)
                for name, kw in (CUDA_TORCH_IMPLS if cuda else IMPLS).items()
            }
            impls["pyoptim"] = _make_setup(py_cls, dict(lr=1e-3), data)
            if cuda:
                impls["pyoptim-fused"] = _make_setup(py_cls, dict(lr=1e-3, fused=True), data)
            out.append(
                Workload(
                    name=f"{group}/{what}",
                    group=group,
                    numel=numel,
                    n_tensors=len(shapes),
                    bytes_per_step=adam_bytes_per_elem(dtype) * numel,
                    impls=impls,
                    baseline="pyoptim",
                    description=f"{torch_cls.__name__}, {dtype}, {len(shapes)} tensors",
                    targets=targets,
                    cleanup=data.cleanup,
                )
            )
    return out
