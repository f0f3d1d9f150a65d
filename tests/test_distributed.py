"""pyoptim where torch.optim runs at scale: FSDP2 (DTensor params), DDP, ZeroRedundancyOptimizer,
distributed state dicts and torch.distributed.checkpoint, threads per rank.

Gloo on CPU processes (tests/dist_utils.py), tiny models. Every check trains pyoptim next to
torch.optim on the same setup (same init, same data on each rank) and compares with torch:
Adam / AdamW within tests/tolerances.py's PARITY rule (k x torch's own for-loop vs fused=True
spread, measured in the same run, plus a floor: the rule of test_optim_parity.py, here over a
few steps of a distributed run), SGD bit for bit (sgd_tol), SparseAdam within
SPARSE_ADAM_VS_TORCH_MKL. One process group per test; each test runs a group of checks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from dist_utils import needs_procs, spawn, torchrun
from tolerances import SPARSE_ADAM_VS_TORCH_MKL, parity_tolerance, sgd_tol
from torch import Tensor, nn

import pyoptim

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

ADAM_CASES = {  # name -> (class name, constructor kwargs)
    "AdamW": ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    "Adam-amsgrad": ("Adam", dict(lr=1e-2, weight_decay=0.01, amsgrad=True)),
}
SGD_CASE = ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3))
STEPS = 4


# ---------------------------------------------------------------------------------------------
# Helpers run inside the ranks
# ---------------------------------------------------------------------------------------------

def _mlp() -> nn.Sequential:
    # The last weight has 1 row: on 2 ranks, and on 4, a rank holds an empty shard of it (and
    # of its bias); 10 and 5 rows shard unevenly on 4 ranks.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 5), nn.Tanh(),
                         nn.Linear(5, 1))


def _fsdp2(model: nn.Module, mesh, **kwargs) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh, **kwargs)
    return fully_shard(model, mesh=mesh, **kwargs)


def _optimizer(cls: str, kwargs: dict, impl: str, params) -> torch.optim.Optimizer:
    """impl: "pyoptim", torch's for-loop "loop", or torch's "fused"."""
    if impl == "pyoptim":
        return getattr(pyoptim, cls)(params, **kwargs)
    return getattr(torch.optim, cls)(params, foreach=False, fused=(impl == "fused") or None,
                                     **kwargs)


def _batch(step: int, rank: int) -> Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(1000 * step + rank))


def _train(model: nn.Module, opt, rank: int, steps: range) -> None:
    for step in steps:
        model(_batch(step, rank)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def _full(t: Tensor) -> Tensor:
    """The global tensor (a collective for a DTensor: every rank calls it, in the same order)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _params(model: nn.Module) -> Tensor:
    return torch.cat([_full(p.detach()).reshape(-1) for p in model.parameters()])


def _state(opt: torch.optim.Optimizer, params: list[Tensor], key: str) -> Tensor:
    return torch.cat([_full(opt.state[p][key]).reshape(-1) for p in params])


def _assert_adam_close(what: str, ours: Tensor, loop: Tensor, fused: Tensor) -> None:
    """tolerances.py's PARITY rule: |pyoptim - torch for-loop| <= k x torch's own
    |fused - for-loop| + floor."""
    spread = (fused - loop).abs().max().item()
    bound = parity_tolerance("adam", torch.float32).bound(spread, loop.abs().max().item(),
                                                         torch.float32)
    err = (ours - loop).abs().max().item()
    assert err <= bound, (f"{what}: |pyoptim - torch| = {err:.3g} > {bound:.3g} (torch's own "
                          f"fused vs for-loop spread: {spread:.3g})")


def _assert_sgd_equal(what: str, ours: Tensor, loop: Tensor, steps: int) -> None:
    torch.testing.assert_close(ours, loop, **sgd_tol(torch.float32, steps),
                               msg=lambda m: f"{what}: pyoptim.SGD vs torch.optim.SGD: {m}")


def _compare(what: str, cls: str, runs: dict, params_of: Callable, steps: int,
             init: Tensor | None = None) -> None:
    """pyoptim's run vs torch's: params and every state tensor (runs: impl -> (model, opt))."""
    full = {impl: _params(m) for impl, (m, _) in runs.items()}
    if init is not None:  # the runs trained: a check that passes vacuously is no check
        assert (full["loop"] - init).abs().max() > 1e-3, f"{what}: training changed nothing"
    keys = [k for k in runs["loop"][1].state[params_of(runs["loop"][0])[0]] if k != "step"]
    for key in ["params", *keys]:
        got = {impl: full[impl] if key == "params" else _state(o, params_of(m), key)
               for impl, (m, o) in runs.items()}
        if cls == "SGD":
            _assert_sgd_equal(f"{what} {key}", got["pyoptim"], got["loop"], steps)
        else:
            _assert_adam_close(f"{what} {key}", got["pyoptim"], got["loop"], got["fused"])
    ours, ref = runs["pyoptim"], runs["loop"]
    for p, q in zip(params_of(ours[0]), params_of(ref[0])):
        if "step" in ref[1].state[q]:
            assert float(ours[1].state[p]["step"]) == float(ref[1].state[q]["step"])


def _assert_state_like_torch(what: str, opt, ref_opt, params: list[Tensor],
                             ref_params: list[Tensor]) -> None:
    """pyoptim's state has torch's keys and types; each state tensor of a DTensor param is a
    DTensor with the param's mesh, placements, global and local shape, as torch's is."""
    from torch.distributed.tensor import DTensor

    for p, q in zip(params, ref_params):
        ours, ref = opt.state[p], ref_opt.state[q]
        assert ours.keys() == ref.keys(), f"{what}: state keys {ours.keys()} vs {ref.keys()}"
        for key, value in ours.items():
            assert type(value) is type(ref[key]), (
                f"{what}: state[{key!r}] is a {type(value).__name__}, torch's a "
                f"{type(ref[key]).__name__}")
            if isinstance(value, DTensor) or isinstance(ref[key], DTensor):
                for t in (value, ref[key]):
                    assert (t.device_mesh, t.placements, t.shape) == (
                        p.device_mesh, p.placements, p.shape), what
                    assert t._local_tensor.shape == p._local_tensor.shape, what


def _cases() -> list[tuple[str, str, dict, list[str]]]:
    """(name, class, kwargs, impls) of every case: Adam's need torch's fused run as yardstick."""
    cases = [(name, cls, kw, ["pyoptim", "loop", "fused"])
             for name, (cls, kw) in ADAM_CASES.items()]
    return cases + [("SGD", SGD_CASE[0], SGD_CASE[1], ["pyoptim", "loop"])]


# ---------------------------------------------------------------------------------------------
# FSDP2
# ---------------------------------------------------------------------------------------------

def _fsdp2_worker(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh("cpu", (world,))
    init = _params(_mlp())
    empty_seen = False
    policies = {"": {}, " CPUOffloadPolicy": dict(offload_policy=CPUOffloadPolicy(
        pin_memory=False))}
    for name, cls, kwargs, impls in _cases():
        for policy, shard_kw in policies.items():
            if policy and name != "AdamW":
                continue
            runs = {}
            for impl in impls:
                model = _fsdp2(_mlp(), mesh, **shard_kw)
                opt = _optimizer(cls, kwargs, impl, model.parameters())
                _train(model, opt, rank, range(STEPS))
                runs[impl] = (model, opt)
            what = f"FSDP2 {name}{policy}"
            params = {impl: list(m.parameters()) for impl, (m, _) in runs.items()}
            _assert_state_like_torch(what, runs["pyoptim"][1], runs["loop"][1],
                                     params["pyoptim"], params["loop"])
            _compare(what, cls, runs, lambda m: list(m.parameters()), STEPS, init)
            for p in params["pyoptim"]:
                local = runs["pyoptim"][1].state[p]
                if p._local_tensor.numel() == 0:
                    empty_seen = True
                    assert all(v._local_tensor.numel() == 0 for k, v in local.items()
                               if k != "step")
                if policy:
                    assert all(v.device.type == "cpu" for v in local.values())
    if rank == world - 1:
        assert empty_seen, "no rank held an empty shard: the model no longer tests that case"

    # Mixed: the first Linear is an FSDP2 module (DTensor params), the rest plain tensors, all
    # in one param group. torch's fused kernel takes no mixed lists: its yardstick run puts the
    # DTensor and the plain params in two groups (the same update).
    for name, cls, kwargs, impls in _cases():
        if name == "Adam-amsgrad":
            continue
        runs = {}
        for impl in impls:
            model = _mlp()
            fully_shard(model[0], mesh=mesh)
            params = list(model.parameters())
            groups = [{"params": params[:2]}, {"params": params[2:]}] if impl == "fused" \
                else params
            opt = _optimizer(cls, kwargs, impl, groups)
            _train(model, opt, rank, range(STEPS))
            runs[impl] = (model, opt)
        kinds = [type(p).__name__ for p in runs["pyoptim"][0].parameters()]
        assert "DTensor" in kinds and "Parameter" in kinds, kinds
        _compare(f"FSDP2 mixed DTensor and plain params, {name}", cls, runs,
                 lambda m: list(m.parameters()), STEPS, init)
    _bad_layouts(rank, mesh)
    _replaced_shard(rank, mesh)
    _sgd_mixed_dtype_grads(rank, mesh)
    _mixed_precision_modes(rank, mesh)


def _bad_layouts(rank: int, mesh) -> None:
    """A grad or state tensor not laid out as its DTensor param raises, after a good step (whose
    checked layouts are remembered), and the failed step writes nothing. RowWiseAdagrad refuses
    DTensor params before it makes any state."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    model = _fsdp2(_mlp(), mesh)
    opt = pyoptim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, rank, range(1))
    model(_batch(1, rank)).pow(2).mean().backward()
    p = next(model.parameters())
    state = opt.state[p]
    good_grad, good_avg = p.grad, state["exp_avg"]
    bad = {
        "plain state": ("exp_avg", good_avg._local_tensor.clone(), TypeError, "not a DTensor"),
        "Partial grad": ("grad", DTensor.from_local(  # unreduced, as autograd may leave it
            good_grad._local_tensor, mesh, [Partial()], run_check=False, shape=p.shape,
            stride=p.stride()), ValueError, "Partial"),
        "Replicate state": ("exp_avg", DTensor.from_local(torch.zeros(p.shape), mesh,
                                                          [Replicate()], run_check=False),
                            ValueError, "must be the same"),
    }
    tensors = [t for q in model.parameters() for t in (q, *opt.state[q].values())]
    before = [t._local_tensor.clone() if isinstance(t, DTensor) else t.clone() for t in tensors]
    for what, (key, value, error, match) in bad.items():
        if key == "grad":
            p.grad = value
        else:
            state[key] = value
        with pytest.raises(error, match=match):
            opt.step()
        p.grad, state["exp_avg"] = good_grad, good_avg
        after = [t._local_tensor if isinstance(t, DTensor) else t for t in tensors]
        assert all(map(torch.equal, before, after)), f"{what}: the failed step wrote"
    opt.step()  # good again
    assert not torch.equal(before[0], p._local_tensor) or p._local_tensor.numel() == 0
    # RowWiseAdagrad: one accumulator per row, no DTensor layout: a clear error, no state made
    before = [q._local_tensor.clone() for q in model.parameters()]
    rowwise = pyoptim.RowWiseAdagrad(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="RowWiseAdagrad does not support DTensor params"):
        rowwise.step()
    assert len(rowwise.state) == 0
    assert all(map(torch.equal, before, (q._local_tensor for q in model.parameters())))


def _replaced_shard(rank: int, mesh) -> None:
    """A DTensor param whose local shard is replaced between steps (FSDP2 assigns a new
    _local_tensor when it resets a param): the step updates the new shard as an optimizer that
    never saw the old one does, bit for bit, and keeps nothing of the old shard alive (the
    Plan's views of the params' shards, Note [Held state] in pyoptim/_state.py). A step count
    set to a DTensor later is stepped on its local value."""
    import gc
    import weakref

    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def param(seed: int) -> nn.Parameter:
        g = torch.Generator().manual_seed(seed)
        w = nn.Parameter(distribute_tensor(torch.randn(6, 4, generator=g), mesh, [Shard(0)]))
        w.grad = distribute_tensor(torch.randn(6, 4, generator=g), mesh, [Shard(0)])
        return w

    ws, refs = [param(0), param(1)], [param(0), param(1)]
    opt, ref = pyoptim.AdamW(ws, lr=1e-2), pyoptim.AdamW(refs, lr=1e-2)
    for _ in range(2):
        opt.step()
        ref.step()
    old = ws[0]._local_tensor
    gone = weakref.ref(old)
    ws[0]._local_tensor = old.clone()
    before = old.clone()
    opt.step()
    assert torch.equal(old, before), "the replaced shard was stepped"
    del old
    gc.collect()
    assert gone() is None, "the step keeps the replaced shard alive"
    ref.step()
    opt.step()
    ref.step()
    for w, r in zip(ws, refs):
        assert torch.equal(w._local_tensor, r._local_tensor)
    # a step count that is a DTensor (Note [DTensor params]: stepped on its local value)
    state = opt.state[ws[1]]
    state["step"] = distribute_tensor(state["step"].clone(), mesh, [Replicate()])
    opt.step()
    ref.step()
    assert torch.equal(state["step"]._local_tensor, ref.state[refs[1]]["step"])
    for w, r in zip(ws, refs):
        assert torch.equal(w._local_tensor, r._local_tensor)


def _sgd_mixed_dtype_grads(rank: int, mesh) -> None:
    """A bfloat16 grad of a float32 DTensor param: pyoptim.SGD steps it with torch's own SGD (as
    for a plain param), and its momentum buffer is a DTensor like torch's."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    got = {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        w = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        w.grad_dtype = None  # torch then allows a grad of another dtype
        opt = _optimizer("SGD", dict(lr=0.1, momentum=0.9), impl, [w])
        for step in range(2):
            g = torch.randn(4, 3, generator=torch.Generator().manual_seed(step)).bfloat16()
            w.grad = distribute_tensor(g, mesh, [Shard(0)])
            opt.step()
        buf = opt.state[w]["momentum_buffer"]
        assert isinstance(buf, DTensor) and buf.placements == w.placements, impl
        got[impl] = (_full(w.detach()), _full(buf))
    for ours, ref in zip(got["pyoptim"], got["loop"]):
        assert ours.dtype == ref.dtype and torch.equal(ours, ref)


def _mixed_precision_modes(rank: int, mesh) -> None:
    """DTensor params in every mixed-precision mode but 8-bit states: after a first step on the
    DTensors, each rank's local shards step bit for bit as plain tensors holding the same values
    and state (the op is the same, on the shards), with the extra state (master, compensation,
    bfloat16 moments) DTensors laid out as the param and the seed a plain tensor of its own on
    each shard (Note [Seeds of DTensor params]: ranks seeded alike, shards at other offsets).
    state_dtype="8bit" raises TypeError before anything is written or created."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    def params_and_grads(step: int, dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
        g = torch.Generator().manual_seed(step)
        full = [torch.randn(5, 3, generator=g).to(dtype), torch.randn(7, generator=g).to(dtype)]
        return full, [torch.randn(t.shape, generator=g).to(dtype) for t in full]

    bf16, fp32 = torch.bfloat16, torch.float32
    cases = [("AdamW", dict(lr=1e-2, master_weights=True), bf16, "master_param"),
             ("Adam", dict(lr=1e-2, kahan_summation=True, weight_decay=0.1), bf16, "kahan_comp"),
             ("SGD", dict(lr=0.1, momentum=0.9, master_weights=True), bf16, "master_param"),
             ("SGD", dict(lr=0.1, momentum=0.9, kahan_summation=True), bf16, "kahan_comp"),
             ("SGD", dict(lr=0.1, kahan_summation=True, weight_decay=0.1), bf16, "kahan_comp"),
             ("AdamW", dict(lr=1e-2, stochastic_rounding=True), bf16, "sr_seed"),
             ("SGD", dict(lr=0.1, momentum=0.9, stochastic_rounding=True), bf16, "sr_seed"),
             ("AdamW", dict(lr=1e-2, state_dtype=torch.bfloat16), fp32, "exp_avg"),
             ("SGD", dict(lr=0.1, momentum=0.9, state_dtype="bfloat16"), fp32,
              "momentum_buffer")]
    for cls, kwargs, dtype, key in cases:
        init, _ = params_and_grads(0, dtype)
        dts = [nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])) for t in init]
        plain = [nn.Parameter(torch.empty(0, dtype=dtype)) for _ in dts]
        opts = [getattr(pyoptim, cls)(ps, **kwargs) for ps in (dts, plain)]
        for step in range(1, STEPS):
            _, grads = params_and_grads(step, dtype)
            for p, g in zip(dts, grads):
                p.grad = distribute_tensor(g, mesh, [Shard(0)])
            if step == 1:  # the DTensors' first step makes the state (and the seeds), then the
                torch.manual_seed(5)  # plain tensors take their values
                opts[0].step()
                for p, q in zip(dts, plain):
                    q.data = p._local_tensor.clone()
                    opts[1].state[q] = {k: (v._local_tensor if isinstance(v, DTensor) else v)
                                        .clone() for k, v in opts[0].state[p].items()}
                continue
            for p, q in zip(dts, plain):
                q.grad = p.grad._local_tensor.clone()
            for opt in opts:
                opt.step()
        what = (cls, tuple(kwargs), rank)
        for p, q in zip(dts, plain):
            state = opts[0].state[p]
            extra = state[key]
            if key == "sr_seed":
                assert type(extra) is Tensor and extra.dtype == torch.int64, what
            else:
                assert isinstance(extra, DTensor) and extra.placements == p.placements, what
            if "state_dtype" in kwargs:
                assert extra.dtype == torch.bfloat16, what
            assert torch.equal(p._local_tensor, q), what
            for k, v in state.items():
                local = v._local_tensor if isinstance(v, DTensor) else v
                assert torch.equal(local, opts[1].state[q][k]), (*what, k)
            if "sr_seed" in state and p._local_tensor.numel() > 0:
                seeds = [torch.zeros((), dtype=torch.int64) for _ in range(dist.get_world_size())]
                dist.all_gather(seeds, state["sr_seed"])
                assert len(set(int(x) for x in seeds)) == len(seeds), (*what, seeds)
    init, grads = params_and_grads(0, fp32)
    dts = [nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])) for t in init]
    for p, g in zip(dts, grads):
        p.grad = distribute_tensor(g, mesh, [Shard(0)])
    before = [p._local_tensor.clone() for p in dts]
    for cls, kwargs in [("AdamW", {}), ("SGD", dict(momentum=0.9))]:
        opt = getattr(pyoptim, cls)(dts, lr=1e-2, state_dtype="8bit", **kwargs)
        with pytest.raises(TypeError, match="does not support DTensor params"):
            opt.step()
        assert all(map(torch.equal, before, (p._local_tensor for p in dts))), cls
        assert all(len(opt.state[p]) == 0 for p in dts), cls


@needs_procs(2)
def test_fsdp2_matches_torch():
    """FSDP2 (fully_shard) with pyoptim's Adam, AdamW (also with CPUOffloadPolicy) and SGD
    (momentum) vs torch.optim on the same sharded model: params and every state tensor, state
    DTensors laid out as torch's, an empty local shard, plain and DTensor params in one group."""
    spawn(_fsdp2_worker, 2)


# State dicts and DCP. Phase 1 (2 ranks): train, take the optimizer's state dict (sharded for
# Adam, full for SGD) into a fresh optimizer, train on, then save model and optimizer with DCP
# (and the global tensors, for the check after loading). Phase 2 (1 and 4 ranks): load the
# checkpoint into a model sharded another way, check that the state came back exactly, train on.
# Every impl (pyoptim, torch's for-loop, torch's fused) does the same, from its own checkpoint.

DCP_CASES = [("AdamW", "AdamW", dict(lr=1e-2, weight_decay=0.1), ["pyoptim", "loop", "fused"]),
             ("SGD", *SGD_CASE, ["pyoptim", "loop"])]


def _dcp_phase1(rank: int, world: int, root: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        get_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    saved = {}
    for name, cls, kwargs, impls in DCP_CASES:
        runs = {}
        for impl in impls:
            model = _fsdp2(_mlp(), mesh)
            opt = _optimizer(cls, kwargs, impl, model.parameters())
            _train(model, opt, rank, range(STEPS))
            full = cls == "SGD"  # the full state on rank 0, broadcast when set
            osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(
                full_state_dict=full, cpu_offload=full))
            opt = _optimizer(cls, kwargs, impl, model.parameters())
            set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(
                full_state_dict=full, broadcast_from_rank0=full))
            _train(model, opt, rank, range(STEPS, 2 * STEPS))
            runs[impl] = (model, opt)
            msd, osd = get_state_dict(model, opt)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(root, name, impl))
            params = list(model.parameters())
            saved[name, impl] = {"params": _params(model), **{
                key: _state(opt, params, key) for key in opt.state[params[0]] if key != "step"}}
        _compare(f"FSDP2 {name}, state dict round trip", cls, runs,
                 lambda m: list(m.parameters()), 2 * STEPS)
    if rank == 0:
        torch.save(saved, os.path.join(root, "saved.pt"))


def _dcp_phase2(rank: int, world: int, root: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    saved = torch.load(os.path.join(root, "saved.pt"))
    for name, cls, kwargs, impls in DCP_CASES:
        runs = {}
        for impl in impls:
            model = _fsdp2(_mlp(), mesh)
            opt = _optimizer(cls, kwargs, impl, model.parameters())
            msd, osd = get_state_dict(model, opt)  # initializes the optimizer's state
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=os.path.join(root, name, impl))
            set_state_dict(model, opt, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
            params = list(model.parameters())
            for key, value in saved[name, impl].items():
                got = _params(model) if key == "params" else _state(opt, params, key)
                assert torch.equal(got, value), f"{name} {impl}: {key} not loaded as saved"
            _train(model, opt, rank, range(2 * STEPS, 3 * STEPS))
            runs[impl] = (model, opt)
        _compare(f"FSDP2 {name}, DCP saved on 2 ranks, loaded on {world}", cls, runs,
                 lambda m: list(m.parameters()), 3 * STEPS)


@pytest.fixture(scope="module")
def dcp_checkpoint(tmp_path_factory):
    """Phase 1 on 2 ranks; the directory of its checkpoints."""
    root = str(tmp_path_factory.mktemp("dcp"))
    spawn(_dcp_phase1, 2, root)
    return root


@needs_procs(2)
def test_fsdp2_state_dict_round_trip(dcp_checkpoint):
    """get_optimizer_state_dict / set_optimizer_state_dict (sharded for AdamW, full for SGD)
    into a fresh optimizer, then training on matches torch doing the same (phase 1 checks it,
    and saves the DCP checkpoint the next test loads)."""
    assert os.path.exists(os.path.join(dcp_checkpoint, "saved.pt"))


@needs_procs(2)  # phase 1
@pytest.mark.parametrize("world", [pytest.param(n, marks=needs_procs(n), id=f"{n}-ranks")
                                   for n in (1, 4)])
def test_dcp_checkpoint_resharded(dcp_checkpoint, world):
    """A DCP checkpoint written by 2 ranks, loaded by 1 and by 4 (resharding): the state comes
    back exactly, and training continues as torch.optim's does from its own checkpoint."""
    spawn(_dcp_phase2, world, dcp_checkpoint)


# ---------------------------------------------------------------------------------------------
# DDP, ZeroRedundancyOptimizer, sparse embeddings
# ---------------------------------------------------------------------------------------------

def _engines_worker(rank: int, world: int, root: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    init = _params(_mlp())
    cls, kwargs = ADAM_CASES["AdamW"]
    impls = ["pyoptim", "loop", "fused"]

    # DDP
    runs = {}
    for impl in impls:
        model = DDP(_mlp())
        opt = _optimizer(cls, kwargs, impl, model.parameters())
        _train(model, opt, rank, range(STEPS))
        runs[impl] = (model, opt)
    _compare("DDP AdamW", cls, runs, lambda m: list(m.parameters()), STEPS, init)

    # ZeroRedundancyOptimizer: train, consolidate on rank 0, save, reload into a fresh one on
    # every rank, train on
    runs = {}
    for impl in impls:
        model = DDP(_mlp())
        extra = {} if impl == "pyoptim" else dict(foreach=False, fused=(impl == "fused") or None)
        optimizer_class = getattr(pyoptim if impl == "pyoptim" else torch.optim, cls)
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=optimizer_class,
                                       **kwargs, **extra)
        _train(model, zero, rank, range(STEPS))
        zero.consolidate_state_dict(to=0)
        path = os.path.join(root, f"zero-{impl}.pt")
        if rank == 0:
            sd = zero.state_dict()
            assert len(sd["state"]) == len(list(model.parameters())), sd["state"].keys()
            torch.save(sd, path)
        dist.barrier()
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=optimizer_class,
                                       **kwargs, **extra)
        zero.load_state_dict(torch.load(path))
        _train(model, zero, rank, range(STEPS, 2 * STEPS))
        runs[impl] = (model, zero.optim)  # zero.optim: this rank's optimizer, its partition
    model, opt = runs["loop"]
    local = [k for k, p in enumerate(model.parameters()) if p in opt.state]
    _compare("ZeroRedundancyOptimizer(AdamW), consolidated and reloaded", cls, runs,
             lambda m: [list(m.parameters())[k] for k in local], 2 * STEPS)

    # DDP with a sparse nn.Embedding: SparseAdam, and plain sparse SGD
    for cls, kwargs in [("SparseAdam", dict(lr=1e-2)), ("SGD", dict(lr=0.1))]:
        got = {}
        for impl in ["pyoptim", "loop"]:
            torch.manual_seed(0)
            model = DDP(nn.Embedding(40, 3, sparse=True))
            if impl == "pyoptim":
                opt = getattr(pyoptim, cls)(model.parameters(), **kwargs)
            else:
                opt = getattr(torch.optim, cls)(model.parameters(), **kwargs)
            for step in range(STEPS):
                gen = torch.Generator().manual_seed(1000 * step + rank)
                idx = torch.randint(0, 40, (3, 8), generator=gen)  # duplicates within and across
                model(idx).pow(2).sum().backward()
                assert model.module.weight.grad.is_sparse
                opt.step()
                opt.zero_grad()
            weight = model.module.weight.detach()
            got[impl] = [weight] + [v for k, v in opt.state[model.module.weight].items()
                                    if k != "step"]
        assert (got["loop"][0] - _embedding0()).abs().max() > 1e-3
        for ours, ref in zip(got["pyoptim"], got["loop"]):
            if cls == "SGD":
                _assert_sgd_equal("DDP sparse SGD", ours, ref, STEPS)
            else:
                atol, rtol = SPARSE_ADAM_VS_TORCH_MKL[torch.float32]
                torch.testing.assert_close(ours, ref, atol=atol, rtol=rtol)


def _embedding0() -> Tensor:
    torch.manual_seed(0)
    return nn.Embedding(40, 3, sparse=True).weight.detach()


@needs_procs(2)
def test_ddp_zero_and_sparse_embeddings(tmp_path):
    """DDP with AdamW; ZeroRedundancyOptimizer(optimizer_class=pyoptim.AdamW) with
    consolidate_state_dict and reload; DDP with a sparse nn.Embedding and pyoptim.SparseAdam /
    sparse pyoptim.SGD: each against torch.optim doing the same."""
    spawn(_engines_worker, 2, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Threads per rank
# ---------------------------------------------------------------------------------------------

def _cpu_ticks_by_thread() -> dict[int, int]:
    """CPU time (user + system, in clock ticks) of each thread of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return ticks


def _threads_stepping(opt: torch.optim.Optimizer, seconds: float = 0.5) -> int:
    """How many threads of this process work while `opt.step()` runs again and again: those
    with at least a quarter of the busiest one's CPU time (a thread of the team waits for the
    others at the end of each region, so it is busy too; a thread outside it sleeps)."""
    opt.step()  # the thread pool is started
    before = _cpu_ticks_by_thread()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        opt.step()
    after = _cpu_ticks_by_thread()
    used = [after[t] - before.get(t, 0) for t in after]
    return sum(u >= max(used) / 4 for u in used)


def _threads_worker(rank: int, world: int) -> None:
    assert os.environ.get("OMP_NUM_THREADS") == "1", "torchrun sets OMP_NUM_THREADS=1"
    assert torch.get_num_threads() == 1
    p = torch.zeros(1 << 21, requires_grad=True)  # 8 MB: far above the op's one-thread grain
    p.grad = torch.ones_like(p)
    opt = pyoptim.AdamW([p], lr=1e-3)
    dist.barrier()
    counts = [_threads_stepping(opt)]
    for n in (rank + 1, 1):  # per rank: rank r asks for r + 1 threads, then 1 again
        torch.set_num_threads(n)
        dist.barrier()
        counts.append(_threads_stepping(opt))
    expected = [1, rank + 1, 1]
    assert counts == expected, f"rank {rank}: threads stepping {counts}, expected {expected}"


@needs_procs(2)
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_threads_per_rank_under_torchrun():
    """Under torchrun each rank's step uses torch's intra-op thread count of that rank:
    torchrun's OMP_NUM_THREADS=1 by default, and torch.set_num_threads(n) per rank after."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    torchrun("test_distributed:_threads_worker", 2, env=env)
