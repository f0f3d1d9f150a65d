"""Class level: pyoptim.Adam / AdamW against torch.optim.Adam / AdamW, and every optimizer
(Adam, AdamW, SGD dense and sparse, SparseAdam) for every flag combination torch accepts against
torch.optim's own run with those flags (the *_every_flag_combination_* tests).

Every run trains THREE copies of the same model (same init, same data): pyoptim, torch's
for-loop implementation and torch's fused=True (foreach=True where fused does not apply). The
distance pyoptim <-> for-loop must stay within tests/tolerances.py's PARITY rule, which is
relative to torch's own spread (fused <-> for-loop). Plus the API surface: param groups,
zero_grad, closures, add_param_group, hooks, schedulers, tensor lr / betas, GradScaler,
state_dict both ways, odd params (mixed dtypes, non-contiguous, empty, no grad, complex),
NaN/inf, differentiable fallback, foreach/fused flags, isinstance.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
from collections.abc import Callable

import op_calls
import pytest
import torch
from conftest import dtype_id
from helpers import any_changed, assert_bitwise_equal, snapshot
from reference_sparse_adam import ieee_torch_mode
from tolerances import (
    MATRIX_STEPS,
    PARITY_STEPS,
    SPARSE_ADAM_VS_TORCH_IEEE,
    SPARSE_ADAM_VS_TORCH_MKL,
    few_steps_tol,
    parity_tolerance,
    sgd_tol,
    sgd_vs_torch_bound,
)
from torch import Tensor, nn

import pyoptim

IMPLS = ("pyoptim", "loop", "other")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """One row of the OptimizerInfo-like table."""

    cls: str  # "Adam" or "AdamW"
    kwargs: dict
    desc: str
    loss_sign: float = 1.0  # maximize=True trains on -loss, so training still converges

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.desc}"


CONFIGS = [
    OptimConfig("Adam", {}, "defaults"),
    OptimConfig("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6), "lr-betas-eps"),
    OptimConfig("Adam", dict(lr=1e-2, betas=(0.3, 0.9)), "beta1<0.5-lerp-branch"),
    OptimConfig("Adam", dict(lr=1e-2, weight_decay=0.1), "l2"),
    OptimConfig("Adam", dict(lr=1e-2, amsgrad=True), "amsgrad"),
    OptimConfig("Adam", dict(lr=1e-2, maximize=True), "maximize", loss_sign=-1.0),
    OptimConfig("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
                "l2-amsgrad-maximize", loss_sign=-1.0),
    OptimConfig("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
                "decoupled"),
    OptimConfig("AdamW", {}, "defaults"),
    OptimConfig("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True), "amsgrad"),
    OptimConfig("AdamW", dict(lr=1e-2, weight_decay=0.0), "no-decay"),
    OptimConfig("AdamW", dict(lr=1e-2, maximize=True, betas=(0.0, 0.5)), "maximize-beta1=0",
                loss_sign=-1.0),
]


def mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 8, generator=g).to(dtype), torch.randn(64, 4, generator=g).to(dtype)


def torch_cls(cls: str):
    return getattr(torch.optim, cls)


class Triplet:
    """One model per implementation, same init and data, stepped together."""

    def __init__(self, cfg: OptimConfig, dtype=torch.float32,
                 model_fn: Callable[[torch.dtype], nn.Module] = mlp,
                 params_fn: Callable[[nn.Module], object] = lambda m: m.parameters(),
                 other: str = "fused", loss_fn: Callable | None = None,
                 reference: str = "loop"):
        self.cfg, self.dtype, self.reference = cfg, dtype, reference
        self.models = {name: model_fn(dtype) for name in IMPLS}
        other_kw = {"fused": dict(fused=True), "foreach": dict(foreach=True)}[other]
        makers = {
            "pyoptim": lambda p: getattr(pyoptim, cfg.cls)(p, **copy.deepcopy(cfg.kwargs)),
            "loop": lambda p: torch_cls(cfg.cls)(p, **copy.deepcopy(cfg.kwargs), foreach=False),
            "other": lambda p: torch_cls(cfg.cls)(p, **copy.deepcopy(cfg.kwargs), **other_kw),
        }
        self.opts = {n: makers[n](params_fn(self.models[n])) for n in IMPLS}
        self.x, self.y = data(dtype)
        self.loss_fn = loss_fn or (lambda m, x, y: ((m(x) - y) ** 2).mean())
        self.init = snapshot(self.params("pyoptim"))

    def params(self, name: str) -> list:
        return [p for g in self.opts[name].param_groups for p in g["params"]]

    def backward(self, name: str):
        loss = self.cfg.loss_sign * self.loss_fn(self.models[name], self.x, self.y)
        loss.backward()
        return loss

    def step(self, n: int = 1, closure: bool = False, after_backward=None) -> None:
        for _ in range(n):
            for name in IMPLS:
                opt = self.opts[name]
                if closure:
                    def closure_fn(name=name, opt=opt):
                        opt.zero_grad()
                        return self.backward(name)
                    opt.step(closure_fn)
                else:
                    opt.zero_grad()
                    self.backward(name)
                    if after_backward:
                        after_backward(self.models[name])
                    opt.step()

    def check(self, family: str = "adam") -> None:
        """Params close to torch (PARITY rule), step counts equal, and trained."""
        def real(p):
            return torch.view_as_real(p.detach()) if p.is_complex() else p.detach()

        flat = {n: torch.cat([real(p).double().flatten() for p in self.params(n)])
                for n in IMPLS}
        ref, other = ("loop", "other") if self.reference == "loop" else ("other", "loop")
        tol = parity_tolerance(family, self.dtype)
        spread = (flat[other] - flat[ref]).abs().max().item()
        dist = (flat["pyoptim"] - flat[ref]).abs().max().item()
        bound = tol.bound(spread, flat[ref].abs().max().item(), self.dtype)
        assert dist <= bound, (f"|pyoptim - torch| = {dist:.3g} > {bound:.3g} "
                               f"(torch spread {spread:.3g})")
        for p, q in zip(self.params("pyoptim"), self.params("loop")):
            s, t = self.opts["pyoptim"].state.get(p, {}), self.opts["loop"].state.get(q, {})
            assert s.keys() == t.keys()
            if "step" in s:
                assert s["step"].item() == t["step"].item()
                assert s["step"].dtype == t["step"].dtype
        assert any_changed(self.init, self.params("pyoptim")), "training did not move params"


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_training_matches_torch(cfg):
    t = Triplet(cfg, torch.float32)
    t.step(PARITY_STEPS)
    t.check()


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[6], CONFIGS[9]], ids=lambda c: c.id)
def test_float64_training_matches_torch(cfg):
    t = Triplet(cfg, torch.float64)
    t.step(PARITY_STEPS)
    t.check()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[9]], ids=lambda c: c.id)
def test_reduced_precision_training_matches_torch(cfg, dtype):
    """Against torch's fused kernel, which (like pyoptim) computes in float32 and rounds once;
    torch's for-loop (every intermediate rounded to the param dtype) is the spread. eps=1e-3:
    the default 1e-8 is 0 in float16, where torch's for-loop divides 0 by 0 (NaN) at step 2."""
    cfg = dataclasses.replace(cfg, kwargs=dict(cfg.kwargs, eps=1e-3))
    t = Triplet(cfg, dtype, reference="fused")
    t.step(50)
    t.check()


def two_groups(m: nn.Module):
    return [dict(params=m[0].parameters()), dict(params=m[2].parameters(), lr=1e-2)]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_param_groups_with_own_lr(cls):
    """backbone at the default 1e-3, classifier at 1e-2: each group steps with its own lr."""
    t = Triplet(OptimConfig(cls, dict(lr=1e-3), "groups"), params_fn=two_groups)
    assert [g["lr"] for g in t.opts["pyoptim"].param_groups] == [1e-3, 1e-2]
    t.step(50)
    t.check()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    m = mlp()
    opt = pyoptim.Adam(m.parameters())
    before = snapshot(list(m.parameters()))
    ((m(data()[0])) ** 2).mean().backward()
    opt.step()
    assert any_changed(before, list(m.parameters()))
    opt.zero_grad(set_to_none=set_to_none)
    for p in m.parameters():
        assert (p.grad is None) if set_to_none else bool((p.grad == 0).all())


def test_step_with_closure_returns_loss():
    t = Triplet(CONFIGS[1])
    losses = {}
    for name in IMPLS:
        opt = t.opts[name]
        def closure(name=name, opt=opt):
            opt.zero_grad()
            return t.backward(name)
        losses[name] = opt.step(closure)
    assert losses["pyoptim"] is not None
    assert losses["pyoptim"].item() == losses["loop"].item()
    t.step(30, closure=True)
    t.check()


def test_add_param_group_mid_training():
    def model_fn(dtype):
        torch.manual_seed(0)
        return nn.ModuleDict(dict(body=mlp(dtype), head=nn.Linear(4, 2).to(dtype)))

    def loss_fn(m, x, y):
        return (m["head"](m["body"](x)) ** 2).mean() + ((m["body"](x) - y) ** 2).mean()

    t = Triplet(CONFIGS[3], model_fn=model_fn, params_fn=lambda m: m["body"].parameters(),
                loss_fn=loss_fn)
    t.step(20)
    head_before = snapshot(list(t.models["pyoptim"]["head"].parameters()))
    for name in IMPLS:
        t.opts[name].add_param_group(dict(params=t.models[name]["head"].parameters(), lr=5e-3))
    t.step(20)
    t.check()
    assert any_changed(head_before, list(t.models["pyoptim"]["head"].parameters()))
    assert len(t.opts["pyoptim"].state) == 6


def test_step_pre_and_post_hooks():
    m = mlp()
    opt = pyoptim.AdamW(m.parameters())
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o)))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o)))
    before = snapshot(list(m.parameters()))
    for _ in range(2):
        opt.zero_grad()
        ((m(data()[0])) ** 2).mean().backward()
        opt.step()
    assert calls == [("pre", opt), ("post", opt)] * 2
    h1.remove()
    h2.remove()
    opt.step()
    assert len(calls) == 4
    assert any_changed(before, list(m.parameters()))


def _hook_trace(cls: type, subclass: bool) -> tuple[list, list[str], float]:
    """What a step records, run with torch's or pyoptim's `cls`: the calls its hooks and
    closure see (a pre-hook replaces the closure through its return value), the profiler
    ranges named Optimizer.step#..., and the param afterwards."""
    if subclass:  # a user's subclass with its own step: torch wraps it, hooks run once
        class cls(cls):  # noqa: N801
            def step(self, closure=None):
                return super().step(closure)
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 0.5)
    opt = cls([p], lr=0.1)
    seen = []

    def closure(tag):
        seen.append(("closure", tag))
        return torch.tensor(1.0)

    def pre(o, args, kwargs):
        seen.append(("pre", len(args), args[0] is o, sorted(kwargs)))
        return (args[0],), {"closure": lambda: closure("from pre-hook")}

    def post(o, args, kwargs):
        seen.append(("post", len(args), sorted(kwargs)))

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    with torch.profiler.profile() as prof:
        loss = opt.step(lambda: closure("given"))
    for h in handles:
        h.remove()
    seen.append(("loss", float(loss)))
    ranges = [e.name for e in prof.events() if e.name.startswith("Optimizer.step#")]
    return seen, [r.replace(cls.__name__, "<cls>") for r in ranges], p.detach().clone()


@pytest.mark.parametrize("subclass", [False, True], ids=["class", "user-subclass"])
@pytest.mark.parametrize("name", ["SGD", "AdamW", "SparseAdam"])
def test_step_hooks_and_profiler_range_as_torch(name, subclass):
    """Note [Step hooks] (pyoptim/_state.py): pyoptim's step calls the hooks torch's wrapper
    calls, with the same arguments, lets a pre-hook replace them, and opens the same profiler
    range, once, also for a subclass that defines its own step."""
    if name == "SparseAdam":  # a dense grad: both raise the same error inside the range
        with pytest.raises(RuntimeError) as torch_err:
            _hook_trace(torch.optim.SparseAdam, subclass)
        with pytest.raises(RuntimeError) as ours:
            _hook_trace(pyoptim.SparseAdam, subclass)
        assert str(ours.value) == str(torch_err.value)
        return
    ours = _hook_trace(getattr(pyoptim, name), subclass)
    # torch's own subclass case runs the hooks twice once the base class's step is wrapped too
    # (any torch.optim.<name> made before): the reference is torch's class
    theirs = _hook_trace(getattr(torch.optim, name), False)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1] == ["Optimizer.step#<cls>.step"]
    torch.testing.assert_close(ours[2], theirs[2])


def test_step_pre_hook_bad_return_raises_as_torch():
    def bad(o, args, kwargs):
        return 3

    errors = []
    for cls in (torch.optim.SGD, pyoptim.SGD):
        p = nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        opt = cls([p], lr=0.1)
        opt.register_step_pre_hook(bad)
        with pytest.raises(RuntimeError, match="must return None or a tuple") as e:
            opt.step()
        errors.append(str(e.value).split(" must return")[1])
        assert torch.equal(p.detach(), torch.ones(2))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("lib", [torch.optim, pyoptim], ids=["torch", "pyoptim"])
@pytest.mark.parametrize("name", ["Adam", "SGD", "Adamax", "Adagrad"])
def test_params_swap_after_steps(name, lib):
    """Note [Held state] (pyoptim/_state.py): the optimizer holds no C++ reference to a param,
    so torch.utils.swap_tensors (module.to() with swapping, as FSDP2 does) works on a param it
    has stepped, as with torch.optim, and the state it keeps is the state dict's."""
    model = nn.Linear(4, 3)
    opt = getattr(lib, name)(model.parameters(), lr=0.1,
                             **({"momentum": 0.9} if name == "SGD" else {}))
    for _ in range(2):
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    before = {k: v.clone() for k, v in opt.state[model.weight].items()}
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    assert model.weight.dtype == torch.float64
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("sched", ["StepLR", "OneCycleLR"])
def test_lr_schedulers(sched):
    t = Triplet(OptimConfig("Adam", dict(lr=1e-2), "sched"))
    make = {
        "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
        "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-2,
                                                                    total_steps=60),
    }[sched]
    scheds = {n: make(t.opts[n]) for n in IMPLS}
    lrs = []
    for _ in range(60):
        t.step()
        for s in scheds.values():
            s.step()
        lrs.append(t.opts["pyoptim"].param_groups[0]["lr"])
    assert len(set(lrs)) > 3  # the schedule really changed lr
    assert t.opts["pyoptim"].param_groups[0]["lr"] == t.opts["loop"].param_groups[0]["lr"]
    t.check()


def test_lr_as_tensor():
    cfg = OptimConfig("Adam", dict(lr=torch.tensor(1e-2)), "lr-tensor")
    t = Triplet(cfg)
    t.step(50)
    t.check()
    # and with a scheduler that writes into the tensor: the new value is used
    opt = t.opts["pyoptim"]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr_tensor = opt.param_groups[0]["lr"]
    for _ in range(2):
        before = snapshot(t.params("pyoptim"))
        opt.zero_grad()
        t.backward("pyoptim")
        opt.step()
        assert any_changed(before, t.params("pyoptim"))
        sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor
    assert lr_tensor.item() == torch.tensor(1e-2 * 0.25).item()


def test_tensor_betas():
    cfg = OptimConfig("AdamW", dict(lr=1e-2, betas=(torch.tensor(0.8), torch.tensor(0.99))),
                      "tensor-betas")
    t = Triplet(cfg)
    t.step(50)
    t.check()


def test_grad_scaler_with_forced_inf_step():
    """GradScaler on CPU: normal steps match torch; an inf grad skips the step entirely."""
    t = Triplet(OptimConfig("Adam", dict(lr=1e-2), "amp"))
    scalers = {n: torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=5)
               for n in IMPLS}

    def amp_step(poison: bool):
        for name in IMPLS:
            opt, sc = t.opts[name], scalers[name]
            opt.zero_grad()
            sc.scale(t.cfg.loss_sign * t.loss_fn(t.models[name], t.x, t.y)).backward()
            if poison:
                next(t.models[name].parameters()).grad.view(-1)[3] = float("inf")
            sc.step(opt)
            sc.update()

    for _ in range(12):
        amp_step(False)
    t.check()
    opt = t.opts["pyoptim"]
    before = snapshot(dict(params=t.params("pyoptim"),
                           state=[dict(opt.state[p]) for p in t.params("pyoptim")]))
    scale_before = scalers["pyoptim"].get_scale()
    amp_step(True)
    after = dict(params=t.params("pyoptim"),
                 state=[dict(opt.state[p]) for p in t.params("pyoptim")])
    assert_bitwise_equal(after, before, "skipped step")
    assert scalers["pyoptim"].get_scale() == scale_before / 2
    assert scalers["pyoptim"].get_scale() == scalers["loop"].get_scale()
    for _ in range(5):
        amp_step(False)
    t.check()


@pytest.mark.parametrize("direction", ["torch->pyoptim", "pyoptim->torch"])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[6], CONFIGS[9]], ids=lambda c: c.id)
def test_state_dict_round_trip(cfg, direction):
    """Train one implementation, load its state_dict (and weights) into the other kind, train
    both on: the continuation matches torch's own continuation."""
    src_is_torch = direction == "torch->pyoptim"
    t = Triplet(cfg)
    t.step(20)
    src = "loop" if src_is_torch else "pyoptim"
    sd = copy.deepcopy(t.opts[src].state_dict())
    weights = copy.deepcopy(t.models[src].state_dict())
    for name in IMPLS:  # everyone continues from the same point: src's weights and state
        t.models[name].load_state_dict(weights)
        t.opts[name].load_state_dict(copy.deepcopy(sd))
    dst = "pyoptim" if src_is_torch else "loop"
    assert_bitwise_equal(t.opts[dst].state_dict()["state"], sd["state"], "loaded state")
    t.init = snapshot(t.params("pyoptim"))
    t.step(20)
    t.check()


def test_mixed_dtypes_in_one_group():
    def model_fn(dtype):
        torch.manual_seed(0)
        m = mlp(torch.float32)
        m[0].double()
        m[2].bias.data = m[2].bias.data.bfloat16().float()  # exact in bf16
        return m

    def loss_fn(m, x, y):
        h = torch.tanh(m[0](x.double())).float()
        return ((m[2](h) - y) ** 2).mean()

    t = Triplet(CONFIGS[1], model_fn=model_fn, loss_fn=loss_fn)
    dtypes = {p.dtype for p in t.params("pyoptim")}
    assert dtypes == {torch.float32, torch.float64}
    t.step(50)
    t.check()


def test_mixed_dtypes_including_bfloat16():
    """float32, float64 and bfloat16 params in one group: each follows its own dtype's math
    (checked against pyoptim on single-dtype groups, bitwise) and the step counts match."""
    torch.manual_seed(0)
    ps = [torch.randn(33, dtype=dt) for dt in (torch.float32, torch.float64, torch.bfloat16)]
    gs = [torch.randn(33, dtype=dt) for dt in (torch.float32, torch.float64, torch.bfloat16)]
    mixed = [nn.Parameter(p.clone()) for p in ps]
    alone = [nn.Parameter(p.clone()) for p in ps]
    opt = pyoptim.Adam(mixed, lr=1e-2)
    opts = [pyoptim.Adam([p], lr=1e-2) for p in alone]
    for _ in range(3):
        for p, q, g in zip(mixed, alone, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    assert_bitwise_equal(list(mixed), list(alone))
    assert any_changed(ps, list(mixed))


def test_non_contiguous_params_and_grads():
    """A transposed weight as the parameter, a grad with other strides than the param."""
    torch.manual_seed(0)
    w0 = torch.randn(5, 7)
    x = torch.randn(16, 7)
    g_rows = torch.randn(7, 5)
    res = {}
    for impl in ("pyoptim", "loop", "other"):
        w = nn.Parameter(w0.clone().t())  # (7, 5), strides (1, 7)
        assert not w.is_contiguous()
        strides = w.stride()
        opt = {"pyoptim": lambda p: pyoptim.Adam(p, lr=1e-2),
               "loop": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
               "other": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True)}[impl]([w])
        for k in range(30):
            opt.zero_grad()
            if k % 2:
                ((x @ w) ** 2).mean().backward()  # autograd's grad
            else:
                w.grad = g_rows.clone()  # contiguous (7, 5): strides differ from w's
                assert w.grad.stride() != w.stride()
            opt.step()
        assert w.stride() == strides  # updated in place, layout kept
        res[impl] = w.detach().clone()
    tol = parity_tolerance("adam", torch.float32)
    spread = (res["other"] - res["loop"]).abs().max().item()
    bound = tol.bound(spread, res["loop"].abs().max().item(), torch.float32)
    assert (res["pyoptim"] - res["loop"]).abs().max().item() <= bound
    assert not torch.equal(res["pyoptim"], w0.t())


def test_zero_element_params():
    """Empty params get state and a step count like torch's, and do not disturb the others."""
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.empty(0)), nn.Parameter(torch.empty(3, 0)),
          nn.Parameter(torch.randn(4))]
    qs = [nn.Parameter(p.detach().clone()) for p in ps]
    alone = nn.Parameter(ps[2].detach().clone())
    opt, ref = pyoptim.Adam(ps, lr=1e-2), torch.optim.Adam(qs, lr=1e-2, foreach=False)
    opt_alone = pyoptim.Adam([alone], lr=1e-2)
    before = snapshot(list(ps))
    for p, q in zip(ps, qs):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    alone.grad = torch.ones_like(alone)
    opt.step()
    ref.step()
    opt_alone.step()
    for p, q in zip(ps, qs):
        assert opt.state[p].keys() == ref.state[q].keys()
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 1.0
        assert opt.state[p]["exp_avg"].shape == p.shape
    assert_bitwise_equal(ps[2], alone)
    assert any_changed(before, list(ps))


def test_params_without_grad_are_skipped():
    m = mlp()
    opt = pyoptim.Adam(m.parameters(), lr=1e-2)
    ((m(data()[0])) ** 2).mean().backward()
    m[2].bias.grad = None
    frozen = m[2].bias.detach().clone()
    before = snapshot(list(m.parameters()))
    opt.step()
    assert m[2].bias not in opt.state  # no state created, as torch
    assert torch.equal(m[2].bias, frozen)
    assert len(opt.state) == 3
    assert any_changed(before, list(m.parameters()))
    # later it gets a grad: state is created then, and the other params keep theirs
    ((m(data()[0])) ** 2).mean().backward()
    opt.step()
    assert opt.state[m[2].bias]["step"].item() == 1.0
    assert opt.state[m[0].weight]["step"].item() == 2.0


def test_param_subclass_torch_function_sees_grad_reads():
    """A param of a Tensor subclass with a __torch_function__ of its own: the step reads its
    grad through it, as torch.optim's does (pyoptim reads the grads of Tensor, Parameter and
    DTensor params with torch function off: Note [Reading grads] in pyoptim/_state.py), and
    steps it as torch does."""
    seen = []

    class Logged(Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", ""))
            return super().__torch_function__(func, types, args, kwargs or {})

    ws = []
    for lib in (pyoptim, torch.optim):
        w = torch.randn(4, generator=torch.Generator().manual_seed(0)).as_subclass(Logged)
        w.requires_grad_()
        w.grad = torch.full((4,), 0.5)
        opt = lib.AdamW([w, nn.Parameter(torch.zeros(3))], lr=0.1)
        opt.step()
        seen.clear()
        opt.step()
        if lib is pyoptim:
            assert "__get__" in seen, seen  # the grad getter reached __torch_function__
        ws.append(w.detach().as_subclass(Tensor))
    assert torch.equal(ws[0], ws[1])


_WRITERS = [  # (class, kwargs, grad): every op that writes params and state
    ("Adam", {}, "dense"), ("AdamW", {"amsgrad": True}, "dense"),
    ("Adam", {"lazy_sparse": True}, "sparse"), ("SGD", {"lr": 0.1}, "dense"),
    ("SGD", {"lr": 0.1, "momentum": 0.9}, "dense"), ("SGD", {"lr": 0.1}, "sparse"),
    ("SGD", {"lr": 0.1}, "complex"), ("Adamax", {}, "dense"), ("Adagrad", {}, "dense"),
    ("Adagrad", {}, "sparse"), ("SparseAdam", {}, "sparse"), ("RowWiseAdagrad", {}, "dense"),
    ("RowWiseAdagrad", {}, "sparse"),
]


def _versions_run(cls, kwargs: dict, grad: str):
    """A param with state after one step, a graph that saved it, and a second step: the
    versions of the param and its state tensors before and after, and what backward does."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.complex64 if grad == "complex" else torch.float32
    w = nn.Parameter(torch.randn(5, 3, generator=g, dtype=dtype))
    opt = cls([w], **kwargs)

    def set_grad():
        if grad == "sparse":
            w.grad = torch.sparse_coo_tensor(torch.tensor([[0, 3, 3]]),
                                             torch.randn(3, 3, generator=g), w.shape)
        else:
            w.grad = torch.randn(w.shape, generator=g, dtype=dtype)

    set_grad()
    opt.step()
    loss = (w * w).abs().sum()  # saves w for backward
    set_grad()
    state = {k: v for k, v in opt.state[w].items() if isinstance(v, torch.Tensor)}
    before = (w._version, {k: v._version for k, v in state.items()})
    opt.step()
    after = (w._version, {k: v._version for k, v in state.items()})
    try:
        loss.backward()
        backward = None
    except RuntimeError as e:
        backward = str(e)
    return before, after, backward


@pytest.mark.parametrize(("name", "kwargs", "grad"), _WRITERS,
                         ids=[f"{n}-{g}-{k}" for n, k, g in _WRITERS])
def test_step_counts_as_an_inplace_write_as_torch(name, kwargs, grad):
    """A step writes the params and state in place, as torch's in-place ops do, so it bumps
    their version counters: a graph that saved a param before the step refuses to backward
    through the new values (torch's "modified by an inplace operation" error: the GAN pitfall of
    stepping before the backward that needs the old weights), where the op wrote through raw
    pointers and backward silently used the updated weights. The versions the step bumps are
    torch's (params and every state tensor); a step that raises bumps nothing."""
    before, after, backward = _versions_run(getattr(pyoptim, name), kwargs, grad)
    assert after[0] > before[0], "the param's version"
    assert backward is not None and "modified by an inplace operation" in backward, backward
    if hasattr(torch.optim, name) and not kwargs.get("lazy_sparse"):
        t_before, t_after, t_backward = _versions_run(getattr(torch.optim, name), kwargs, grad)
        # (torch's AdamW writes the param twice per step: its versions count higher)
        versionless = functools.partial(re.sub, r"version \d+", "version N")
        assert t_backward is not None and versionless(backward) == versionless(t_backward)
        bumped = {k for k, v in after[1].items() if v > before[1][k]}
        assert bumped == {k for k, v in t_after[1].items() if v > t_before[1][k]}
    else:
        assert all(v > before[1][k] for k, v in after[1].items()), (before, after)
    # a step that raises writes nothing and bumps nothing
    w = nn.Parameter(torch.randn(3))
    opt = getattr(pyoptim, name)([w], **kwargs)
    w.grad = (torch.ones(3).to_sparse() if name == "SparseAdam" else torch.ones(3))
    opt.param_groups[0]["lr"] = -1.0
    v = w._version
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    assert w._version == v


def test_validate_only_bumps_no_version():
    """The ops' validate_only pass (a step over several devices checks every call first) writes
    nothing and bumps no version; the writing call bumps each tensor it writes, the grads
    (read only) not (Note [Version counters] in csrc/ops/inplace.cpp)."""
    p, g = torch.randn(4), torch.randn(4)
    m, v, step = torch.zeros(4), torch.zeros(4), torch.zeros(())
    tensors = (p, g, m, v, step)
    hp = dict(lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False, decoupled=False)
    op_calls.adam_([p], [g], [m], [v], [], [step], validate_only=True, **hp)
    assert [t._version for t in tensors] == [0] * 5
    op_calls.adam_([p], [g], [m], [v], [], [step], **hp)
    assert [t._version for t in tensors] == [1, 0, 1, 1, 1]


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_complex_params(cls):
    cfg = OptimConfig(cls, dict(lr=1e-2, weight_decay=0.05, amsgrad=True), "complex")

    def model_fn(dtype):
        torch.manual_seed(0)
        m = nn.Module()
        m.w = nn.Parameter(torch.randn(6, 4, dtype=torch.complex64))
        m.b = nn.Parameter(torch.randn(4))
        return m

    def loss_fn(m, x, y):
        z = x[:, :6].to(torch.complex64) @ m.w
        return (z.abs() ** 2).mean() + ((z.real + m.b - y) ** 2).mean()

    t = Triplet(cfg, model_fn=model_fn, loss_fn=loss_fn, other="foreach")
    t.step(50)
    t.check()
    assert t.opts["pyoptim"].state[t.models["pyoptim"].w]["exp_avg"].is_complex()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adamax", "Adagrad"])
@pytest.mark.parametrize("kwargs", [
    {}, dict(maximize=True), dict(weight_decay=0.1), dict(maximize=True, foreach=True),
    dict(weight_decay=0.1, foreach=False), dict(maximize=True, lr=torch.tensor(0.1)),
], ids=["plain", "maximize", "wd", "maximize-foreach", "wd-for-loop", "maximize-tensor-lr"])
def test_conjugated_complex_grad_steps_where_torch_steps_it(name, kwargs):
    """A complex grad with the conjugation bit (autograd's grad of p.conj()): torch's for-loop
    step (the CPU's default) takes it where it makes a new grad tensor before view_as_real
    (maximize, Adam's L2 weight_decay, Adamax's and Adagrad's weight_decay) and raises
    view_as_real's error otherwise, and its foreach step always raises. pyoptim raised in every
    case; it now steps (torch's numbers) or raises as torch, leaving nothing changed."""
    out, steps = [], 2
    for lib in (torch.optim, pyoptim):
        g = torch.Generator().manual_seed(0)
        p = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=g))
        b = nn.Parameter(torch.randn(3, generator=g))
        kw = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        opt = getattr(lib, name)([p, b], **{"lr": 0.1, **kw})
        for _ in range(steps):
            p.grad = torch.randn(4, 3, dtype=torch.complex64, generator=g).conj()
            b.grad = torch.randn(3, generator=g)
            before = snapshot(([p, b], opt.state_dict()["state"]))
            try:
                opt.step()
            except RuntimeError as e:
                out.append(str(e))
                if lib is pyoptim:
                    assert_bitwise_equal(snapshot(([p, b], opt.state_dict()["state"])), before)
                break
        else:
            out.append([p.detach().clone(), b.detach().clone()])
    torch_out, ours = out
    if isinstance(torch_out, str):
        assert ours == torch_out
    else:
        assert not isinstance(ours, str), ours
        for t, q in zip(torch_out, ours):
            torch.testing.assert_close(q, t, **few_steps_tol(t, steps))


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_nan_and_inf_grads_like_torch(cls, amsgrad):
    """NaN / inf in grads: the same elements become NaN / inf as in torch (params and state);
    the finite ones follow the PARITY rule (torch's for-loop vs fused as the yardstick)."""
    torch.manual_seed(0)
    p0 = torch.randn(40)
    res = {}
    for impl in ("pyoptim", "loop", "fused"):
        p = nn.Parameter(p0.clone())
        make = getattr(pyoptim, cls) if impl == "pyoptim" else torch_cls(cls)
        extra = {"pyoptim": {}, "loop": dict(foreach=False), "fused": dict(fused=True)}[impl]
        opt = make([p], lr=1e-2, amsgrad=amsgrad, **extra)
        for k in range(3):
            g = torch.randn(40, generator=torch.Generator().manual_seed(k))
            g[5], g[17], g[18] = float("nan"), float("inf"), -float("inf")
            if k == 2:
                g[30] = float("nan")
            p.grad = g
            opt.step()
        res[impl] = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    (pp, ps), (tp, ts), (fp, _) = res["pyoptim"], res["loop"], res["fused"]
    assert torch.equal(pp.isnan(), tp.isnan()) and torch.equal(pp.isinf(), tp.isinf())
    for key in ps:
        assert torch.equal(ps[key].isnan(), ts[key].isnan()), key
        assert torch.equal(ps[key].isinf(), ts[key].isinf()), key
    finite = pp.isfinite()
    tol = parity_tolerance("adam", torch.float32)
    spread = (fp[finite] - tp[finite]).abs().max().item()
    bound = tol.bound(spread, tp[finite].abs().max().item(), torch.float32)
    assert (pp[finite] - tp[finite]).abs().max().item() <= bound
    assert pp.isnan().any() and not torch.equal(pp[finite], p0[finite])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adamax"])
def test_capturable_switched_on_for_cpu_params_raises_as_torch(name):
    """capturable=True set in a param group after a step: torch checks in every step that the
    params are on a capturable device and raises its AssertionError for CPU params; pyoptim
    reused the step's plan, in which the check is made, and stepped. Now it raises torch's
    error, before anything is written."""
    errors = []
    for lib in (torch.optim, pyoptim):
        p = nn.Parameter(torch.ones(3))
        opt = getattr(lib, name)([p], lr=0.1)
        p.grad = torch.full((3,), 0.5)
        opt.step()
        before = snapshot(([p], opt.state_dict()["state"]))
        opt.param_groups[0]["capturable"] = True
        with pytest.raises(AssertionError) as e:
            opt.step()
        errors.append(str(e.value))
        assert_bitwise_equal(snapshot(([p], opt.state_dict()["state"])), before)
    assert errors[0] == errors[1]


def test_differentiable_falls_back_to_torch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the native op must not run with differentiable=True")

    monkeypatch.setattr(pyoptim.adam, "_adam_", boom)
    torch.manual_seed(0)
    w0 = torch.randn(5)
    res = {}
    for impl in ("pyoptim", "torch"):
        leaf = w0.clone().requires_grad_(True)
        w = leaf.clone()  # differentiable steps need a non-leaf param (in-place on a graph)
        opt = (pyoptim.Adam if impl == "pyoptim" else torch.optim.Adam)(
            [w], lr=1e-2, differentiable=True)
        for _ in range(3):
            w.grad = torch.sin(w.detach())
            opt.step()
        # the update is differentiable: d(sum w)/d(leaf) exists
        (dleaf,) = torch.autograd.grad(w.sum(), leaf)
        res[impl] = (w.detach().clone(), dleaf)
    assert_bitwise_equal(res["pyoptim"], res["torch"])
    assert not torch.equal(res["pyoptim"][0], w0)


# ---- every flag combination against torch.optim's own run ------------------------------------
# pyoptim(flags) against torch.optim(flags), MATRIX_STEPS steps from the same init on the same
# data, params and every state tensor. torch's runs depend only on the optimizer, its hyper-
# parameters and its own flag, so each is made once and shared by the tests that need it.

_TORCH_RUNS: dict = {}


@dataclasses.dataclass
class Run:
    params: torch.Tensor  # every param, flattened and concatenated, as float64
    state: dict  # state key -> the params' tensors for it, flattened and concatenated
    steps: list  # per param: its step count (a Python number), or None
    group: dict  # param_groups[0] without "params", tensors as Python numbers
    moved: bool  # training changed the params


def _group(opt) -> dict:
    return {k: (v.item() if isinstance(v, torch.Tensor) else v)
            for k, v in opt.param_groups[0].items() if k != "params"}


def _train_run(make, model_fn, batch_fn, steps: int = MATRIX_STEPS) -> Run:
    model = model_fn()
    params = list(model.parameters())
    init = snapshot(params)
    opt = make(params)
    for k in range(steps):
        opt.zero_grad()
        batch_fn(model, k).backward()
        opt.step()
    state = {}
    for key in sorted({key for p in params for key, v in opt.state[p].items()
                       if isinstance(v, torch.Tensor) and key != "step"}):
        state[key] = torch.cat([opt.state[p][key].detach().double().flatten() for p in params])
    steps_ = [(lambda s: s.item() if isinstance(s, torch.Tensor) else s)(opt.state[p]["step"])
              if "step" in opt.state[p] else None for p in params]
    return Run(torch.cat([p.detach().double().flatten() for p in params]), state, steps_,
               _group(opt), any_changed(init, params))


def _torch_run(key: tuple, make, model_fn, batch_fn) -> Run:
    if key not in _TORCH_RUNS:
        _TORCH_RUNS[key] = _train_run(make, model_fn, batch_fn)
    return _TORCH_RUNS[key]


def _mlp_batch(sign: float):
    x, y = data()
    return lambda m, k: sign * ((m(x) - y) ** 2).mean()


def _assert_same_error(make_torch, make_pyoptim, model_fn, batch_fn):
    """A combination torch refuses: pyoptim refuses it too, with torch's exception and message
    (at construction or at the first step, wherever torch raises)."""
    errors = []
    for make in (make_torch, make_pyoptim):
        with pytest.raises(Exception) as info:
            _train_run(make, model_fn, batch_fn, steps=1)
        errors.append(info)
    (theirs, ours) = errors
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def _lr(kind: str, value: float):
    return torch.tensor(value) if kind == "tensor-lr" else value


ADAM_FLAGS = {"default": {}, "foreach": dict(foreach=True), "fused": dict(fused=True),
              "capturable": dict(capturable=True),
              "foreach-capturable": dict(foreach=True, capturable=True),
              "fused-capturable": dict(fused=True, capturable=True)}


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("impl", list(ADAM_FLAGS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["wd=0", "wd=0.1"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_every_flag_combination_matches_torch(cls, amsgrad, maximize, weight_decay, impl,
                                                   lr_kind):
    """pyoptim.<cls>(flags) against torch.optim.<cls>(flags): params and every state tensor
    within PARITY (k x torch's own fused-vs-for-loop spread of that tensor + floor), step counts
    and param_groups equal. The reference is torch's run with the same flags: its for-loop for
    the default, its foreach / fused implementation for foreach=True / fused=True. torch
    refuses capturable=True for CPU params (but with fused=True: its fused step does not check
    it; its foreach step's message lists other devices than its for-loop's) and foreach=True
    with a Tensor lr, and so must pyoptim, with the same error."""
    kw = dict(lr=_lr(lr_kind, 1e-2), amsgrad=amsgrad, maximize=maximize,
              weight_decay=weight_decay)
    flags = ADAM_FLAGS[impl]
    batch = _mlp_batch(-1.0 if maximize else 1.0)  # maximize trains on -loss: still converges

    def maker(impl_cls, **extra):
        return lambda p: impl_cls(p, **copy.deepcopy(kw), **extra)

    if impl in ("capturable", "foreach-capturable") or (impl == "foreach"
                                                        and lr_kind == "tensor-lr"):
        _assert_same_error(maker(torch_cls(cls), **flags), maker(getattr(pyoptim, cls), **flags),
                           mlp, batch)
        return
    config = (cls, amsgrad, maximize, weight_decay, lr_kind)
    ours = _train_run(maker(getattr(pyoptim, cls), **flags), mlp, batch)
    loop = _torch_run(config + ("loop",), maker(torch_cls(cls), foreach=False), mlp, batch)
    fused = _torch_run(config + ("fused",), maker(torch_cls(cls), fused=True), mlp, batch)
    ref = {"default": loop, "fused": fused}.get(impl) or _torch_run(
        config + (impl,), maker(torch_cls(cls), **flags), mlp, batch)
    tol = parity_tolerance("adam", torch.float32)
    assert ours.moved and ours.state.keys() == ref.state.keys()
    for key, x, r, lo, fu in [("params", ours.params, ref.params, loop.params, fused.params)] + [
            (k, ours.state[k], ref.state[k], loop.state[k], fused.state[k]) for k in ours.state]:
        spread = (fu - lo).abs().max().item()
        dist = (x - r).abs().max().item()
        bound = tol.bound(spread, r.abs().max().item(), torch.float32)
        assert dist <= bound, (f"{key}: |pyoptim - torch| = {dist:.3g} > {bound:.3g} "
                               f"(torch's spread {spread:.3g})")
    assert ours.steps == ref.steps == [float(MATRIX_STEPS)] * len(ours.steps)
    assert ours.group == _group(maker(torch_cls(cls), **flags)(mlp().parameters()))


SGD_MOMENTUM = {
    "plain": dict(momentum=0.0),
    "plain-dampening": dict(momentum=0.0, dampening=0.5),  # accepted; no effect without momentum
    "momentum": dict(momentum=0.9),
    "momentum-dampening": dict(momentum=0.9, dampening=0.5),
    "nesterov": dict(momentum=0.9, nesterov=True),
}
SGD_FLAGS = {"default": {}, "foreach": dict(foreach=True), "fused": dict(fused=True)}


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("impl", list(SGD_FLAGS))
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2], ids=["wd=0", "wd=0.01"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("momentum", list(SGD_MOMENTUM))
def test_sgd_every_flag_combination_matches_torch(momentum, maximize, weight_decay, impl,
                                                  lr_kind):
    """pyoptim.SGD(flags), dense grads, against torch.optim.SGD: equal to torch's for-loop within
    sgd_tol (bit for bit where ATen fuses add(alpha)), params and momentum buffers, and against
    torch's own foreach / fused run for those flags within sgd_vs_torch_bound (torch's own
    spread to its for-loop, nothing more)."""
    kw = dict(lr=_lr(lr_kind, 0.05), weight_decay=weight_decay, maximize=maximize,
              **SGD_MOMENTUM[momentum])
    flags = SGD_FLAGS[impl]
    batch = _mlp_batch(-1.0 if maximize else 1.0)

    def maker(impl_cls, **extra):
        return lambda p: impl_cls(p, **copy.deepcopy(kw), **extra)

    config = ("SGD", momentum, maximize, weight_decay, lr_kind)
    ours = _train_run(maker(pyoptim.SGD, **flags), mlp, batch)
    loop = _torch_run(config + ("loop",), maker(torch.optim.SGD, foreach=False), mlp, batch)
    assert ours.moved and ours.state.keys() == loop.state.keys()
    assert ("momentum_buffer" in ours.state) == (kw["momentum"] != 0)
    pairs = [("params", ours.params, loop.params)] + [
        (k, ours.state[k], loop.state[k]) for k in ours.state]
    for key, x, r in pairs:
        torch.testing.assert_close(x.float(), r.float(), **sgd_tol(torch.float32, MATRIX_STEPS),
                                   msg=f"{key}: pyoptim vs torch's for-loop")
    if impl != "default":
        ref = _torch_run(config + (impl,), maker(torch.optim.SGD, **flags), mlp, batch)
        for key, x, lo in pairs:
            r = ref.params if key == "params" else ref.state[key]
            spread = (r - lo).abs().max().item()
            dist = (x - r).abs().max().item()
            bound = sgd_vs_torch_bound(spread, lo.abs().max().item(), torch.float32,
                                       MATRIX_STEPS)
            assert dist <= bound, f"{key}: |pyoptim - torch {impl}| = {dist:.3g} > {bound:.3g}"
    assert ours.group == _group(maker(torch.optim.SGD, **flags)(mlp().parameters()))


def _embedding(bag: bool = False, dtype=torch.float32):
    def make():
        torch.manual_seed(0)
        if bag:
            return nn.EmbeddingBag(60, 8, mode="sum", sparse=True, dtype=dtype)
        return nn.Embedding(60, 8, sparse=True, dtype=dtype)
    return make


def _lookup_batch(sign: float, bag: bool = False, dtype=torch.float32):
    """Zipf-like lookups with repeats (duplicate rows in every grad), a bounded loss."""
    g = torch.Generator().manual_seed(3)
    w = 1.0 / torch.arange(1, 61, dtype=torch.float64)
    idx = [torch.multinomial(w, 48, replacement=True, generator=g) for _ in range(MATRIX_STEPS)]
    ys = [torch.randn(48 // (2 if bag else 1), 8, generator=g).to(dtype)
          for _ in range(MATRIX_STEPS)]

    def batch(m, k):
        out = m(idx[k].view(-1, 2)) if bag else m(idx[k])
        return sign * torch.tanh(out - ys[k]).pow(2).sum()
    return batch


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("impl", ["default", "foreach"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
def test_sparse_sgd_every_flag_combination_matches_torch(bag, maximize, impl, lr_kind):
    """pyoptim.SGD with sparse grads, where torch supports them (plain SGD: momentum and weight
    decay have torch's dense semantics there, pyoptim's are lazy), against torch.optim.SGD's own
    run with the same flags: sgd_tol (bit for bit where ATen fuses add(alpha)). fused=True:
    torch's fused SGD refuses sparse grads (pyoptim accepts them), so there is no torch run."""
    kw = dict(lr=_lr(lr_kind, 0.1), maximize=maximize, **SGD_FLAGS[impl])
    batch = _lookup_batch(-1.0 if maximize else 1.0, bag)
    ours = _train_run(lambda p: pyoptim.SGD(p, **copy.deepcopy(kw)), _embedding(bag), batch)
    theirs = _train_run(lambda p: torch.optim.SGD(p, **copy.deepcopy(kw)), _embedding(bag),
                        batch)
    assert ours.moved and ours.state == theirs.state == {}
    torch.testing.assert_close(ours.params.float(), theirs.params.float(),
                               **sgd_tol(torch.float32, MATRIX_STEPS))
    assert ours.group == theirs.group


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_sparse_adam_every_flag_combination_matches_torch(dtype, maximize, lr_kind):
    """pyoptim.SparseAdam against torch.optim.SparseAdam for its flags (maximize, Tensor lr):
    bitwise against torch's own code under ieee_torch_mode (SPARSE_ADAM_VS_TORCH_IEEE: IEEE
    sqrt, pyoptim's duplicate-sum order), within SPARSE_ADAM_VS_TORCH_MKL of torch as built;
    params, exp_avg, exp_avg_sq and the (int) step counts."""
    kw = dict(lr=_lr(lr_kind, 0.01), maximize=maximize)
    batch = _lookup_batch(-1.0 if maximize else 1.0, dtype=dtype)

    def make(impl_cls):
        return lambda p: impl_cls(p, **copy.deepcopy(kw))

    class PinnedSparseAdam(torch.optim.SparseAdam):
        def step(self, closure=None):
            with ieee_torch_mode():
                return super().step(closure)

    ours = _train_run(make(pyoptim.SparseAdam), _embedding(dtype=dtype), batch)
    pinned = _train_run(make(PinnedSparseAdam), _embedding(dtype=dtype), batch)
    built = _train_run(make(torch.optim.SparseAdam), _embedding(dtype=dtype), batch)
    assert ours.moved and ours.state.keys() == built.state.keys() == {"exp_avg", "exp_avg_sq"}
    assert ours.steps == pinned.steps == built.steps == [MATRIX_STEPS]
    assert all(isinstance(s, int) for s in ours.steps)
    for table, theirs in ((SPARSE_ADAM_VS_TORCH_IEEE, pinned), (SPARSE_ADAM_VS_TORCH_MKL, built)):
        atol, rtol = table[dtype]
        for key, x, r in [("params", ours.params, theirs.params)] + [
                (k, ours.state[k], theirs.state[k]) for k in ours.state]:
            torch.testing.assert_close(x.to(dtype), r.to(dtype), atol=atol, rtol=rtol, msg=key)
    assert ours.group == built.group  # pyoptim's opt-in weight decay: off, not stored


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_isinstance_torch_optimizer(cls):
    opt = getattr(pyoptim, cls)([nn.Parameter(torch.randn(2))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, torch_cls(cls))
    assert opt.defaults == torch_cls(cls)([nn.Parameter(torch.randn(2))]).defaults


# pyoptim's own keyword-only arguments, beyond the torch class's signature
_EXTRA_KEYWORDS = {
    "Adam": ("lazy_sparse", "master_weights", "stochastic_rounding", "state_dtype",
             "kahan_summation"),
    "AdamW": ("lazy_sparse", "master_weights", "stochastic_rounding", "state_dtype",
              "kahan_summation"),
    "SGD": ("master_weights", "stochastic_rounding", "state_dtype", "kahan_summation"),
    "Adamax": (), "Adagrad": (), "SparseAdam": ("weight_decay",),
}


@pytest.mark.parametrize("cls", list(_EXTRA_KEYWORDS))
def test_constructor_signature_is_torchs(cls):
    """inspect.signature (help(), IDEs, config tools that read a class's arguments) shows the
    torch class's parameters, in its order, of its kinds and with its defaults, then pyoptim's
    keyword-only extras (pyoptim.SGD showed `(params, *args, ..., **kwargs)`)."""
    ours = dict(inspect.signature(getattr(pyoptim, cls)).parameters)
    for extra in _EXTRA_KEYWORDS[cls]:
        assert ours.pop(extra).kind is inspect.Parameter.KEYWORD_ONLY, extra
    theirs = inspect.signature(torch_cls(cls)).parameters
    assert [(k, p.kind, p.default) for k, p in ours.items()] == \
        [(k, p.kind, p.default) for k, p in theirs.items()]


@pytest.fixture(autouse=True)
def _one_thread(restore_num_threads):
    """Tiny models: intra-op threads only add synchronization (results do not depend on it)."""
    torch.set_num_threads(1)
