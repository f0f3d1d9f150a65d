"""pyoptim.SGD: torch.optim.SGD with a fused native step, and sparse gradients with momentum.

The class subclasses torch.optim.SGD, so the constructor (lr as float or Tensor, momentum,
dampening, weight_decay, nesterov, maximize, foreach, differentiable, fused), its defaults and
its error messages, param groups, hooks, LR schedulers and state_dict handling are torch's own.
Only `step` differs: one call to `torch.ops.pyoptim.sgd_` per device covers every param group,
validates everything, then updates every tensor in one parallel region.

* Dense gradients: the math mirrors torch's single-tensor SGD expression by expression (see
  csrc/include/pyoptim/math/sgd.h); float32 / float64 results are torch's own bits on AVX2 /
  AVX-512 CPUs.
* Sparse COO gradients (`nn.Embedding(sparse=True)`, `nn.EmbeddingBag(sparse=True)`, coalesced
  or not), in the same call. Plain SGD (momentum=0, weight_decay=0) applies each duplicate row in
  turn, as torch does, and gives torch's exact result. Unlike torch, momentum, nesterov,
  dampening and weight decay are supported, with LAZY semantics: only the rows present in this
  step's gradient are updated.
  For each present row r, with g_r the sum of its duplicate rows::

      g_r = -g_r                                      (maximize)
      g_r = g_r + weight_decay * p_r
      b_r = g_r                                       (buffer's first step, see below)
      b_r = momentum * b_r + (1 - dampening) * g_r    (later steps)
      g_r = g_r + momentum * b_r  (nesterov)   or   g_r = b_r
      p_r = p_r - lr * g_r

  Rows absent from the gradient keep their param and momentum buffer unchanged: they are not
  decayed and their momentum does not keep moving them (a dense step would). First step: when
  the param has no momentum buffer yet, one is created as zeros and each present row gets
  b_r = g_r (torch's first-step rule, row-wise); rows first seen on a later step start from
  b_r = 0, i.e. b_r = (1 - dampening) * g_r.
* A gradient whose dtype differs from its param's (a bfloat16 grad of a float32 param: torch
  promotes) is stepped by torch's own single-tensor SGD, after every other check of the step
  has passed, so the result (and the momentum buffer's dtype, the grad's) is torch's.

State per param is torch's: `momentum_buffer` (a dense tensor like the param), only when
momentum != 0, so state_dicts load both ways between torch.optim.SGD and pyoptim.SGD. (torch
keeps a *sparse* buffer for sparse grads with momentum; one loaded from torch is densified.)

Mixed precision (opt-in, per param group, dense grads; pyoptim/_mixed.py), with momentum != 0:
`master_weights=True` (bfloat16 / float16 params) keeps `master_param`, a float32 copy of the
param, and a float32 momentum buffer, and stores the param rounded to nearest from the master;
`stochastic_rounding=True` (bfloat16 params) stores the param rounded stochastically;
`state_dtype=torch.bfloat16` / "8bit" (float32 params) stores the momentum buffer in bfloat16
or as 8-bit codes with `momentum_buffer_scale` (one float32 per 256 elements), rounded
stochastically (Note [Reduced-precision optimizer states]). The last two keep `sr_seed` (an
int64 CPU tensor): SGD has no step count, so each step adds one to it, and it keys the step's
random bits. With or without momentum: `kahan_summation=True` (bfloat16 / float16 params) keeps
`kahan_comp` (the param's dtype), what rounding the param lost, and adds it back at the next
step (Note [Kahan-compensated 16-bit params] in csrc/include/pyoptim/math/stochastic_round.h):
plain 16-bit SGD loses every update below half an ulp of the weight, and without momentum the
compensation is the param's only state (torch keeps none; torch_state_dict() drops it). Not
with the other modes or differentiable=True.

Flags: `foreach` and `fused` are accepted and validated as torch validates them; the step is
always pyoptim's fused kernel. `differentiable=True` falls back to torch's own implementation.
GradScaler: like torch's fused SGD, `step` takes `grad_scale` / `found_inf` from the scaler
(grads are divided by the scale inside the kernel; a step with inf/NaN grads changes nothing and
creates no momentum buffer).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused
from torch.optim.sgd import sgd as _torch_sgd

from ._mixed import (
    BF16,
    KAHAN,
    KAHAN_KEY,
    MASTER,
    MASTER_KEY,
    Q8,
    SEED_KEY,
    SR,
    STATES,
    MixedPrecision,
    init_master,
    init_states,
    new_seed,
    refuse_dtensor,
    seeded,
    settle_modes_off,
)
from ._state import (
    DeviceCall,
    FusedStep,
    Plan,
    hyper_args,
    on_device,
    optional_keys,
    optional_lists,
    pick,
    scalar_type_name,
    to_param_dtype,
    zeros_state,
)

__all__ = ["SGD"]

_sgd_ = torch.ops.pyoptim.sgd_.default


# The state keys sgd_ reads, each with the index in a group's _layout of the flag saying whether
# the group's params have it. momentum_buffer is a required key (a state dict without one is
# initialized again) unless some group steps Kahan without momentum (_kahan_only): then the
# params with state are not all params with momentum, and it is optional like the others.
_OPTIONAL = (("momentum_buffer", 0), (MASTER_KEY, 1), (SEED_KEY, 2), ("momentum_buffer_scale", 3),
             (KAHAN_KEY, 4))


def _kahan_only(layout: list[tuple]) -> bool:
    """Whether some group's params have state without a momentum buffer (Kahan, momentum 0)."""
    return any(entry[4] and not entry[0] for entry in layout)


class SGD(FusedStep, MixedPrecision, torch.optim.SGD):
    __doc__ = (
        "Drop-in torch.optim.SGD with a fused native step and lazy sparse momentum "
        "(see pyoptim.sgd).\n\n"
        "Extra keyword-only arguments (off by default: torch's behaviour; see pyoptim.sgd):\n"
        "    master_weights, stochastic_rounding (bool, optional): 16-bit params, momentum.\n"
        "    state_dtype (torch.bfloat16, 'bfloat16', '8bit' or None, optional): float32\n"
        "        params, the momentum buffer's format.\n"
        "    kahan_summation (bool, optional): bfloat16 / float16 params keep kahan_comp, what\n"
        "        rounding the param lost, and add it back at the next step (with or without\n"
        "        momentum).\n\n" + (torch.optim.SGD.__doc__ or "")
    )
    _grads_read_by_op = True  # Note [Grads read by the op] in csrc/ops/checks.h
    # Note [State in another dtype] in _state.py (the Kahan compensation too: it is in the
    # param's dtype, as load_state_dict casts it)
    _param_dtype_keys = ("momentum_buffer", KAHAN_KEY)
    _created_in_graph = ("momentum_buffer",)  # Note [Compiled step] in pyoptim/_compiled.py
    _mixed_flags = (MASTER, SR, STATES, KAHAN)
    _fp32_keys = ("momentum_buffer",)  # float32 in master groups
    # the buffer's 8-bit form (Note [Reduced-precision optimizer states])
    _state_maps = {"momentum_buffer": ("momentum_buffer_scale", False)}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        kahan_summation: bool = False,
    ) -> None:
        # torch.optim.SGD's signature (inspect.signature, help()), then the modes
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov,
                         maximize=maximize, foreach=foreach, differentiable=differentiable,
                         fused=fused, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, state_dtype=state_dtype,
                         kahan_summation=kahan_summation)

    def _hyper(self, group: dict) -> tuple:
        return group["lr"], group["momentum"], group["dampening"], group["weight_decay"]

    def _flags(self, group: dict) -> tuple:
        states = group.get(STATES)
        return (group["nesterov"], group["maximize"], group.get(MASTER, False),
                group.get(SR, False), states == BF16, states == Q8, group.get(KAHAN, False))

    def _resolve_conj(self, group: dict) -> bool:
        return True  # torch's SGD steps a complex grad with the conjugation bit

    def _layout(self, groups: list[dict]) -> Any:
        # which state keys the group's params have (see _OPTIONAL: momentum first), then the
        # state format
        return [(g["momentum"] != 0, g.get(MASTER, False), seeded(g), g.get(STATES) == Q8,
                 g.get(KAHAN, False), g.get(STATES)) for g in groups]

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # optional keys: only the params of the groups that need them have them
        if _kahan_only(plan.layout):
            return (), optional_keys(plan, _OPTIONAL)
        return ("momentum_buffer",), optional_keys(plan, _OPTIONAL[1:])

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if group["fused"]:
            if getattr(self, "_need_device_dtype_check_for_fused", True):
                _device_dtype_check_for_fused(p)  # torch checks the first param with a grad, once
                self._need_device_dtype_check_for_fused = False
            # Note [Fused-flag errors] (adam.py): what torch's _fused_sgd raises, after its
            # _init_group, raised by _run before anything is written
            if p.grad.is_sparse:
                plan.keep_fused_error(group, 0, RuntimeError(
                    "`_fused_sgd` does not support sparse gradients"))
            elif not torch.is_floating_point(p):
                plan.keep_fused_error(group, 1, NotImplementedError(
                    f'"fused_sgd_kernel" not implemented for {scalar_type_name(p.dtype)!r}'))
        refuse_dtensor(group, p)
        kahan = group.get(KAHAN, False)
        if group["momentum"] == 0 and not kahan:  # torch does not touch the state without momentum
            state = self.state.get(p)
            if state:  # but a Kahan compensation left by kahan_summation switched off goes
                settle_modes_off(state, group, p, self._state_maps, self._fp32_keys, plan.keep)
                if not state:
                    del self.state[p]
            return False
        if plan.extra is None:
            plan.extra = []  # per param with state: does its buffer take its first step
        state = self.state[p]
        if not state:
            plan.fresh.append(p)  # a skipped or failed step leaves no state
        if group.get(SR, False) and SEED_KEY not in state:
            # a seed per param, from torch's generator; the step adds one to it
            plan.keep(p, state)
            state[SEED_KEY] = new_seed(p)
        if kahan and KAHAN_KEY not in state:
            plan.keep(p, state)
            state[KAHAN_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif kahan:  # Note [State in another dtype] in _state.py (a bfloat16 model made float16)
            to_param_dtype(state, KAHAN_KEY, p, plan.keep)
        if group["momentum"] == 0:  # Kahan without momentum: the compensation is the state
            plan.extra.append(False)
            return True
        buf = state.get("momentum_buffer")
        master = group.get(MASTER, False)
        states = group.get(STATES)
        if buf is None:  # first step: the kernel writes buf = grad (present rows, if sparse)
            plan.keep(p, state)
            dtype = (torch.float32 if master else torch.bfloat16 if states == BF16 else
                     torch.int8 if states == Q8 else None)
            state["momentum_buffer"] = zeros_state(p, dtype)
            if states == Q8:  # one scale per block of 256 elements (row-major order)
                state["momentum_buffer_scale"] = torch.zeros(
                    -(-p.numel() // 256), dtype=torch.float32, device=p.device)
            plan.extra.append(True)
        else:
            if buf.is_sparse:  # a torch state_dict from sparse momentum
                plan.keep(p, state)
                state["momentum_buffer"] = buf.to_dense()
            if not master and states is None:  # Note [State in another dtype] in _state.py
                to_param_dtype(state, "momentum_buffer", p, plan.keep)
            settle_modes_off(state, group, p, self._state_maps, self._fp32_keys, plan.keep)
            plan.extra.append(False)
        if master:
            init_master(state, p, self._fp32_keys, plan.keep)
        elif states is not None:
            init_states(state, p, states, self._state_maps, plan.keep)
        return True

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        if plan.fused_errors:
            self._raise_fused_error(plan)
        layout = plan.layout
        # the state lists hold the params with momentum, and those of Kahan groups
        owners = lambda: [g for g in call.group_of if layout[g][0] or layout[g][4]]  # noqa: E731
        first = pick(plan.extra, call.state_index) if plan.extra and any(plan.extra) else ()
        if _kahan_only(layout):  # the buffers and their first steps of the params with momentum
            groups_of = owners()
            bufs, masters, seeds, scales, comps = optional_lists(
                plan, _OPTIONAL, states, lambda: groups_of)
            bufs = bufs or []
            if first:
                first = [f for f, g in zip(first, groups_of) if layout[g][0]]
        else:
            bufs = states[0] if states else ()
            masters, seeds, scales, comps = optional_lists(plan, _OPTIONAL[1:], states[1:],
                                                           owners)
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        hp = (call.group_sizes, hyper, flags)
        tail = (lr_tensors,
                grad_scale if grad_scale is None else on_device(grad_scale, call.device),
                found_inf if found_inf is None else on_device(found_inf, call.device))
        try:
            _sgd_(params, grads, bufs, *hp, first, *tail, validate_only, masters, seeds, scales,
                  comps)
            return
        except TypeError:
            mixed = [k for k, (p, g) in enumerate(zip(params, grads)) if g.dtype != p.dtype]
            # the modes take grads of their params' dtype: a master, a seed (stochastic
            # rounding, state_dtype) or a compensation in the param's group
            if not mixed or any(layout[call.group_of[k]][j] for k in mixed for j in (1, 2, 4)):
                raise
        self._run_mixed(plan, call, params, grads, bufs, first, mixed, hp, tail, found_inf,
                        validate_only, (masters, seeds, scales, comps))

    def _run_mixed(self, plan: Plan, call: DeviceCall, params: list[Tensor],
                   grads: list[Tensor], bufs: list[Tensor], first: list[bool], mixed: list[int],
                   hp: tuple, tail: tuple, found_inf: Tensor | None,
                   validate_only: bool, modes: tuple) -> None:
        """Params whose grad dtype differs from theirs (all in groups without a mode): torch's
        own SGD steps them, after the op has checked everything else and the checks torch would
        fail on have passed. `modes`: the op's masters, seeds, scales and compensations, of the
        params of mode groups only, so the same for the op's call without those params."""
        groups = plan.groups
        is_mixed = [False] * len(params)
        for k in mixed:
            is_mixed[k] = True
        buf_pos = []  # position in bufs of each param's buffer, or -1
        n_bufs = 0
        for g in call.group_of:
            if groups[g]["momentum"] != 0:
                buf_pos.append(n_bufs)
                n_bufs += 1
            else:
                buf_pos.append(-1)
        keep = [k for k in range(len(params)) if not is_mixed[k]]
        keep_bufs = [buf_pos[k] for k in keep if buf_pos[k] >= 0]
        sizes = [0] * len(groups)
        for k in keep:
            sizes[call.group_of[k]] += 1
        keep_first = pick(first, keep_bufs) if first else []

        def call_op(validate: bool) -> None:
            if not keep:  # every param is stepped by torch (an op with no tensor cannot dispatch)
                return
            _sgd_(pick(params, keep), pick(grads, keep), pick(bufs, keep_bufs), sizes, *hp[1:],
                  keep_first, *tail, validate, *modes)

        call_op(True)
        for k in mixed:
            p, g = params[k], grads[k]
            if not (g.is_floating_point() and g.shape == p.shape and g.device == p.device):
                raise RuntimeError(
                    f"pyoptim.SGD: the grad of a {p.dtype} param of shape {tuple(p.shape)} on "
                    f"{p.device} is a {g.dtype} tensor of shape {tuple(g.shape)} on {g.device}")
        if validate_only:
            return
        if found_inf is not None and bool(found_inf.item()):
            return  # GradScaler found inf/NaN grads: nothing is stepped
        scale = tail[1]
        for k in mixed:
            group = groups[call.group_of[k]]
            p, g = params[k], grads[k]
            if scale is not None:
                g = g / scale.to(g.device)
            buf_list: list[Tensor | None] = []
            if buf_pos[k] >= 0:
                buf_list = [None if first and first[buf_pos[k]] else bufs[buf_pos[k]]]
            _torch_sgd(
                [p], [g], buf_list, foreach=False, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                nesterov=group["nesterov"], maximize=group["maximize"],
                has_sparse_grad=g.is_sparse)
            if buf_list:  # torch's buffer (of the grad's dtype) replaces ours
                plan.dicts[call.state_index[buf_pos[k]]]["momentum_buffer"] = plan.like_param(
                    call, k, buf_list[0])  # a DTensor again where the param is one
        call_op(False)

    def _raise_fused_error(self, plan: Plan) -> None:
        """Note [Fused-flag errors] (adam.py): torch's error for the first param group that has
        one, leaving the state torch leaves: an empty state dict for every param with momentum
        (no new buffer; buffers that existed are kept)."""
        for p in plan.fresh:
            self.state[p].pop("momentum_buffer", None)
            self.state[p].pop(KAHAN_KEY, None)
        plan.fresh = []
        raise plan.first_fused_error()[1]

    def _commit(self, plan: Plan, found_inf: Tensor | None) -> None:
        if not plan.fresh and (not plan.extra or not any(plan.extra)):
            return
        if found_inf is not None and bool(found_inf.item()):
            self._forget_fresh(plan)  # a skipped step creates no momentum buffer (nor Kahan's)
            return
        if plan.extra:
            plan.extra = [False] * len(plan.extra)  # the new buffers took their first step
