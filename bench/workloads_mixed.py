"""Mixed-precision AdamW workloads (CPU only for now: the CUDA kernels of these modes have no
workloads yet):

  bf16-master-1x64M   bfloat16 params with float32 master weights (master_weights=True), 28 B
                      per element; against torch doing the same job: fused AdamW on float32
                      params, then a cast into the bfloat16 copy the model computes with
                      (torch-fused+cast)
  fp32-bf16state-1x64M  float32 params, bfloat16 moments (state_dtype=torch.bfloat16), 20 B;
                      against pyoptim's own float32-state AdamW (pyoptim-fp32state)
  fp32-8bit-1x64M     float32 params, 8-bit moments with block scales (state_dtype="8bit"),
                      16 B (+ the scales); against pyoptim-fp32state, and bitsandbytes' and
                      torchao's AdamW8bit where they install (block-wise dynamic 8-bit moments,
                      blocks of 256: the same bytes)
  bf16-sr-1x64M       bfloat16 params stored stochastically rounded (stochastic_rounding=True),
                      14 B; against torch's fused AdamW (round to nearest) and torchao's
                      _AdamW(bf16_stochastic_round=True)
  bf16-kahan-1x64M    bfloat16 params with a Kahan compensation (kahan_summation=True), 18 B;
                      against torch's fused AdamW and torch-optimi's AdamW(kahan_sum=True)
`make bench` installs the peers (Makefile: BENCH_PEERS).

Bytes of optimizer state per param for each mode are in the description column.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import pyoptim

from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import M, _fmt, _shared_data

_BLOCK = 256  # elements per 8-bit scale (Note [Reduced-precision optimizer states])


def _setup(data, param_dtype, **kw) -> SetupFn:
    def setup():
        params = []
        for base, g in zip(*data()):
            p = base.to(param_dtype, copy=True)
            p.grad = g.to(param_dtype)
            params.append(p)
        opt = pyoptim.AdamW(params, lr=1e-3, **kw)
        return opt.step

    return setup


def _torch_fused_then_cast(data) -> SetupFn:
    """torch's way to train bfloat16 weights with float32 state: fused AdamW on float32 params
    (the grads widened once, outside the timing), then copy_ into the bfloat16 weights."""

    def setup():
        masters, halves = [], []
        for base, g in zip(*data()):
            p = base.float()
            p.grad = g.float()
            masters.append(p)
            halves.append(base.clone())
        opt = torch.optim.AdamW(masters, lr=1e-3, fused=True)

        def step():
            opt.step()
            with torch.no_grad():
                for h, p in zip(halves, masters):
                    h.copy_(p)

        return step

    return setup


def _peer(data, make: Callable[[], Callable] | None, param_dtype, **kw) -> SetupFn | None:
    """A peer optimizer class (make() imports and returns it; None where it does not install
    or load next to this torch) on copies of the workload's params."""
    try:
        cls = make() if make is not None else None
    except Exception:  # not installed, or fails to load next to this torch
        return None
    if cls is None:
        return None

    def setup():
        params = []
        for base, g in zip(*data()):
            p = base.to(param_dtype, copy=True)
            p.grad = g.to(param_dtype)
            params.append(p)
        opt = cls(params, lr=1e-3, **kw)
        return opt.step

    return setup


def _bnb():
    import bitsandbytes as bnb
    return bnb.optim.AdamW8bit


def _torchao_8bit():
    from torchao.optim import AdamW8bit
    return AdamW8bit


def _torchao_adamw():
    from torchao.optim import _AdamW
    return _AdamW


def _optimi_adamw():
    from optimi import AdamW
    return AdamW


def workloads(cfg: BenchConfig) -> list[Workload]:
    if cfg.device != "cpu":
        return []
    big = cfg.n(64 * M, minimum=1024)
    shapes = [(big,)]
    out = []
    bf16_data = _shared_data(shapes, torch.bfloat16, "cpu")
    out.append(Workload(
        name=f"adamw-mixed/bf16-master-1x{_fmt(big)}", group="adamw-mixed", numel=big, n_tensors=1,
        bytes_per_step=28 * big,  # grad 2, master + moments 24 read and written, param 2
        impls={"pyoptim": _setup(bf16_data, torch.bfloat16, master_weights=True),
               "torch-fused+cast": _torch_fused_then_cast(bf16_data)},
        description="bf16 params, master_weights=True; state 12 B/param",
        targets={"%probe": 95.0, "torch-fused+cast": 1.2}, cleanup=bf16_data.cleanup))
    # bf16 params stored stochastically rounded, or with a Kahan compensation: against torch's
    # fused AdamW on bf16 params (round to nearest) and the peers that do the same job
    for what, kw, peer in (
            ("bf16-sr", dict(stochastic_rounding=True),
             ("torchao-sr", _peer(bf16_data, _torchao_adamw, torch.bfloat16,
                                  bf16_stochastic_round=True))),
            ("bf16-kahan", dict(kahan_summation=True),
             ("optimi-kahan", _peer(bf16_data, _optimi_adamw, torch.bfloat16, kahan_sum=True)))):
        impls = {"pyoptim": _setup(bf16_data, torch.bfloat16, **kw),
                 "torch-fused": _peer(bf16_data, lambda: torch.optim.AdamW, torch.bfloat16,
                                      fused=True)}
        if peer[1] is not None:
            impls[peer[0]] = peer[1]
        out.append(Workload(
            name=f"adamw-mixed/{what}-1x{_fmt(big)}", group="adamw-mixed", numel=big,
            n_tensors=1, bytes_per_step=(18 if "kahan" in what else 14) * big,
            impls=impls, description=f"bf16 params, {next(iter(kw))}=True; state "
                                     f"{6 if 'kahan' in what else 4} B/param",
            targets={peer[0]: 5.0} if peer[1] is not None else {}))
    data = _shared_data(shapes, torch.float32, "cpu")
    fp32_state = _setup(data, torch.float32)
    blocks = 2 * 4 / _BLOCK
    q8_peers = {name: setup for name, setup in (
        ("bitsandbytes-8bit", _peer(data, _bnb, torch.float32, min_8bit_size=0)),
        ("torchao-8bit", _peer(data, _torchao_8bit, torch.float32))) if setup is not None}
    for what, fmt, nbytes, state_bytes, target in (
            ("bf16state", torch.bfloat16, 20, "4", 1.3),
            ("8bit", "8bit", 16, f"{2 + blocks:.2f}", 1.6)):
        peers = q8_peers if what == "8bit" else {}
        out.append(Workload(
            name=f"adamw-mixed/fp32-{what}-1x{_fmt(big)}", group="adamw-mixed", numel=big,
            n_tensors=1, bytes_per_step=nbytes * big,
            impls={"pyoptim": _setup(data, torch.float32, state_dtype=fmt),
                   "pyoptim-fp32state": fp32_state, **peers},
            description=f"fp32 params, state_dtype={fmt!r}; state {state_bytes} B/param "
                        "(fp32 state: 8)",
            targets={"pyoptim-fp32state": target, **{name: 5.0 for name in peers}},
            cleanup=data.cleanup if what == "8bit" else None))
    return out
