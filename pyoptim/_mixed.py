"""Mixed precision: the `master_weights=` / `stochastic_rounding=` / `kahan_summation=` flags of
pyoptim.Adam, AdamW and SGD for 16-bit params (SGD: the first two with momentum, Kahan with or
without), and `state_dtype=` for float32 params with bfloat16 or 8-bit moments (SGD: its
buffer); their checks and their checkpoints.
The kernels and the design: Note [Master weights and stochastic rounding] in
csrc/include/pyoptim/math/stochastic_round.h, Note [Reduced-precision optimizer states] in
csrc/include/pyoptim/math/quantize.h.

The flags are constructor kwargs stored in each param group (off by default, so the default is
torch's behaviour; a group may set its own). A flag that is off is not stored: an optimizer
without them has torch's defaults, param groups and state_dict exactly. State added per param:
`master_param` (a float32 copy of the param; the optimizer's other float state is float32 too
in master groups) or `sr_seed` (an int64 CPU tensor; also the seed of reduced states) or
`kahan_comp` (the param's dtype), and with state_dtype="8bit" `exp_avg_scale` /
`exp_avg_sq_scale` (the block scales; exp_avg and exp_avg_sq hold int8 / uint8 codes).
state_dict() is torch's, with these keys added; load_state_dict keeps them as saved (below);
torch_state_dict() exports torch.optim's own format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._state import _dtensor_type, load_then, saved_states

MASTER, SR, STATES, KAHAN = ("master_weights", "stochastic_rounding", "state_dtype",
                             "kahan_summation")
MASTER_KEY, SEED_KEY, KAHAN_KEY = "master_param", "sr_seed", "kahan_comp"
BF16, Q8 = "bfloat16", "8bit"  # the values of a group's state_dtype
_STATE_VALUES = {torch.bfloat16: BF16, BF16: BF16, Q8: Q8}


def state_format(value: Any) -> str | None:
    """A state_dtype argument as stored in a param group: None, "bfloat16" or "8bit"."""
    if value is None:
        return None
    try:
        return _STATE_VALUES[value]
    except (KeyError, TypeError):
        raise ValueError(f"Invalid state_dtype: {value!r} (torch.bfloat16, 'bfloat16', '8bit' "
                         "or None)") from None


def refuse_dtensor(group: dict, p: Tensor) -> None:
    """TypeError for a DTensor param in a state_dtype="8bit" group: its blocks of 256 elements
    and their scales would follow the local shards, and the scales are not shaped like the param
    (a DTensor laid out as it). Raised before the step creates or writes anything."""
    dtensor = _dtensor_type()
    if dtensor is not None and group.get(STATES) == Q8 and isinstance(p, dtensor):
        raise TypeError("state_dtype='8bit' does not support DTensor params yet (its blocks and "
                        "their scales are per local shard)")


def new_seed(p: Tensor) -> Tensor:
    """A param's sr_seed (an int64 CPU tensor), drawn from torch's generator (torch.manual_seed
    makes it reproducible). Note [Seeds of DTensor params]."""
    seed = torch.randint(2**62, (), dtype=torch.int64)
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(p, dtensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        flat, stride = 0, 1
        for o, n in zip(reversed(offset), reversed(p.shape)):
            flat += o * stride
            stride *= n
        seed = (seed + flat) % 2**62
    return seed


# Note [Seeds of DTensor params]
# The random bits of stochastic rounding and of bfloat16 states are keyed by (seed, step, the
# element's index in the tensor the op gets): for a DTensor param, its local shard. With one seed
# per param every shard would draw the same bits (ranks seeded alike draw the same seed), so a
# DTensor param's seed is the drawn one plus the row-major offset of its local shard's first
# element in the global tensor: each shard its own stream, the same on every run with the same
# sharding. The seed is a plain tensor in the state (as `step`), so get/set_optimizer_state_dict
# and torch.distributed.checkpoint treat it as replicated: a run resumed from a DCP checkpoint
# continues with the saving rank's seed on every shard (each shard's rounding stays unbiased;
# the shards' bits are then alike again). 8-bit states stay refused (refuse_dtensor).


def seeded(group: dict) -> bool:
    """Whether the group's params have an sr_seed (stochastic rounding of the param or of the
    moments)."""
    return group.get(SR, False) or STATES in group


# maps: a class's `_state_maps`, state key -> (its 8-bit scale key, quantize_8bit's sqrt_map)
StateMaps = dict[str, tuple[str, bool]]
# keep(p, state), called before a conversion first changes a param's state dict: the step's Plan
# records the dict's items (Plan.keep), put back if the step raises
Keep = Callable[[Tensor, dict], None]


def _keep_nothing(p: Tensor, state: dict) -> None:
    pass


def init_states(state: dict, p: Tensor, fmt: str, maps: StateMaps, keep: Keep) -> None:
    """A float32 param's moments (`maps`' keys) in the format `fmt` (after lazy initialization
    or a load): converted where they are in another (a float32 state: a torch.optim checkpoint,
    or a group whose state_dtype changed), with a seed where there is none."""
    if SEED_KEY not in state:
        keep(p, state)
        state[SEED_KEY] = new_seed(p)
    for key, (scale_key, sqrt_map) in maps.items():
        value = state.get(key)
        if value is None:
            continue
        if fmt == BF16:
            if value.dtype != torch.bfloat16:
                keep(p, state)
                state[key] = float_moment(state, key, maps).to(torch.bfloat16)
            if scale_key in state:
                keep(p, state)
                del state[scale_key]
        elif value.dtype not in (torch.int8, torch.uint8) or scale_key not in state:
            keep(p, state)
            codes, scales = torch.ops.pyoptim.quantize_8bit(
                float_moment(state, key, maps).to(_conversion_device(p), torch.float32), sqrt_map)
            state[key], state[scale_key] = codes.to(p.device), scales.to(p.device)


def float_moment(state: dict, key: str, maps: StateMaps) -> Tensor:
    """A moment as a float tensor, decoded where it is 8-bit."""
    value = state[key]
    if value.dtype in (torch.int8, torch.uint8):
        scale_key, sqrt_map = maps[key]
        device = _conversion_device(value)
        return torch.ops.pyoptim.dequantize_8bit(
            value.to(device), state[scale_key].to(device), sqrt_map).to(value.device)
    return value


def _conversion_device(t: Tensor) -> str:
    """Where the 8-bit conversion ops run for a tensor on t's device: the CPU (their only
    kernels), or the meta device for meta tensors (their Meta kernels: nothing to convert)."""
    return "meta" if t.is_meta else "cpu"


def settle_modes_off(state: dict, group: dict, p: Tensor, maps: StateMaps,
                     fp32_keys: Sequence[str], keep: Keep) -> None:
    """State a mode left that the param's group no longer has (a flag switched off between
    steps), put in the form the group's step reads, as torch_state_dict() writes it: reduced
    moments decoded to the param's dtype and their scales dropped (state_dtype off), the master
    dropped and its float32 state cast to the param's dtype (master_weights off), the Kahan
    compensation dropped, the seed dropped where nothing draws random bits any more. Switching
    a mode on converts the other way (init_master, init_states)."""
    if MASTER_KEY in state and not group.get(MASTER, False):
        keep(p, state)
        del state[MASTER_KEY]
        for key in fp32_keys:
            value = state.get(key)
            if isinstance(value, Tensor) and value.dtype != p.dtype:
                state[key] = value.to(p.dtype)
    if STATES not in group and SEED_KEY in state:  # reduced moments carry a seed (a moment of
        # another dtype without one is torch's: SGD's buffer of a grad of another dtype)
        for key, (scale_key, _) in maps.items():
            value = state.get(key)
            if isinstance(value, Tensor) and value.dtype != p.dtype:
                keep(p, state)
                state[key] = float_moment(state, key, maps).to(p.dtype)
            if scale_key in state:
                keep(p, state)
                del state[scale_key]
    if KAHAN_KEY in state and not group.get(KAHAN, False):
        keep(p, state)
        del state[KAHAN_KEY]
    if SEED_KEY in state and not seeded(group):
        keep(p, state)
        del state[SEED_KEY]


def check_differentiable(groups: Sequence[dict]) -> None:
    """ValueError where a param group has differentiable=True and a param group (the same one or
    another) has a mode on: differentiable=True runs torch's own step, which has none of the
    modes, and torch.optim's step is one step over every param group."""
    on = next((k for k, g in enumerate(groups) if g.get("differentiable", False)), None)
    if on is None:
        return
    for k, group in enumerate(groups):
        for flag in (MASTER, SR, STATES, KAHAN):
            value = group.get(flag, False)
            if value is None or value is False:
                continue
            where = ("" if k == on else
                     f" (param group {k}; differentiable=True in param group {on})")
            raise ValueError(
                f"{flag}={value!r} does not support differentiable=True{where}: "
                "differentiable=True runs torch.optim's own step, for every param group")


def init_master(state: dict, p: Tensor, fp32_keys: Sequence[str], keep: Keep) -> None:
    """A master-weights param's float32 state: the master (from the param where the state has
    none, e.g. loaded from a torch.optim checkpoint) and `fp32_keys` in float32."""
    if MASTER_KEY not in state:
        keep(p, state)
        state[MASTER_KEY] = p.detach().to(torch.float32, memory_format=torch.preserve_format,
                                          copy=True)
    for key in fp32_keys:
        value = state.get(key)
        if isinstance(value, Tensor) and value.dtype != torch.float32:
            keep(p, state)
            state[key] = value.to(torch.float32)


class MixedPrecision:
    """The flags, their checks and checkpoints; between the FusedStep class and the torch
    class in an optimizer's MRO. A class says which flags it takes (`_mixed_flags`) and which
    of its state keys are float32 in master groups (`_fp32_keys`)."""

    _mixed_flags: tuple[str, ...] = (MASTER, SR)
    _fp32_keys: tuple[str, ...] = ()
    _state_maps: StateMaps = {}

    def __init__(self, params: Any, *args: Any, master_weights: bool = False,
                 stochastic_rounding: bool = False, state_dtype: Any = None,
                 kahan_summation: bool = False, **kwargs: Any) -> None:
        for flag, value in ((SR, stochastic_rounding), (STATES, state_dtype),
                            (KAHAN, kahan_summation)):
            if value and flag not in self._mixed_flags:
                raise TypeError(f"{type(self).__name__} does not take {flag}={value!r}")
        on = {MASTER: bool(master_weights), SR: bool(stochastic_rounding),
              KAHAN: bool(kahan_summation)}
        self._mixed_defaults: dict[str, Any] = {key: True for key, value in on.items() if value}
        fmt = state_format(state_dtype)
        if fmt is not None:
            self._mixed_defaults[STATES] = fmt
        super().__init__(params, *args, **kwargs)  # type: ignore[call-arg]
        self.defaults.update(self._mixed_defaults)  # type: ignore[attr-defined]

    def _check_group(self, group: dict) -> None:
        """Clear errors at construction (and in add_param_group) rather than at a step."""
        master, sr = group.get(MASTER, False), group.get(SR, False)
        if STATES in group:
            group[STATES] = fmt = state_format(group[STATES])
            if fmt is None:
                del group[STATES]  # None: torch's state (not stored, as a flag that is off)
            else:
                self._check_states(group, fmt)
        kahan = group.get(KAHAN, False)
        if kahan:
            for flag in (MASTER, SR, STATES, "differentiable"):
                if group.get(flag, False):
                    raise ValueError(f"kahan_summation=True does not support {flag}="
                                     f"{group[flag]!r}")
            for p in group["params"]:
                if p.dtype not in (torch.bfloat16, torch.float16):
                    raise ValueError(f"kahan_summation=True needs bfloat16 or float16 params, "
                                     f"got a {p.dtype} param")
        if master and sr:
            raise ValueError(
                "master_weights=True and stochastic_rounding=True cannot be combined: stochastic "
                "rounding is for bfloat16 params stored without master weights (a master-weights "
                "param is rounded to nearest from its float32 master)")
        if sr and SR not in self._mixed_flags:
            raise ValueError(f"{type(self).__name__} does not support stochastic_rounding")
        if (master or sr) and group.get("differentiable", False):
            raise ValueError(
                f"{MASTER if master else SR}=True does not support differentiable=True")
        if (master or sr) and group.get("momentum", 1) == 0:  # SGD: the buffer holds the state
            raise ValueError(f"{MASTER if master else SR}=True needs momentum != 0 (SGD with "
                             "momentum)")
        for p in group["params"]:
            if master and p.dtype not in (torch.bfloat16, torch.float16):
                raise ValueError(
                    f"master_weights=True needs bfloat16 or float16 params, got a {p.dtype} "
                    "param (a float32 param is its own master)")
            if sr and p.dtype != torch.bfloat16:
                raise ValueError(
                    f"stochastic_rounding=True needs bfloat16 params, got a {p.dtype} param")

    def _prepare_torch_step(self) -> None:
        """Before torch's own step (differentiable=True): the groups checked as at construction
        (a flag changed between steps), then the state a mode left in the form torch's step
        reads, as a step of pyoptim's puts it (settle_modes_off)."""
        groups = self.param_groups  # type: ignore[attr-defined]
        for group in groups:
            self._check_group(group)
        check_differentiable(groups)
        state_of = self.state  # type: ignore[attr-defined]
        for group in groups:
            for p in group["params"]:
                state = state_of.get(p)
                if state:
                    settle_modes_off(state, group, p, self._state_maps, self._fp32_keys,
                                     _keep_nothing)  # (torch's step is not all-or-nothing)
                    if not state:  # (SGD without momentum: Kahan's was its only state)
                        del state_of[p]

    def _check_states(self, group: dict, fmt: str) -> None:
        if STATES not in self._mixed_flags:
            raise ValueError(f"{type(self).__name__} does not support state_dtype")
        for flag in ("amsgrad", MASTER, SR, "differentiable"):
            if group.get(flag, False):
                raise ValueError(f"state_dtype={fmt!r} does not support {flag}=True")
        if group.get("momentum", 1) == 0:  # SGD: the momentum buffer is the state
            raise ValueError(f"state_dtype={fmt!r} needs momentum != 0 (SGD with momentum)")
        for p in group["params"]:
            if p.dtype != torch.float32:
                raise ValueError(
                    f"state_dtype={fmt!r} needs float32 params, got a {p.dtype} param (the "
                    "moments of a 16-bit param are already 16-bit)")

    def torch_state_dict(self) -> dict[str, Any]:
        """This optimizer's state_dict in torch.optim's own format, for torch.optim or any
        tool that expects it: every moment in its param's dtype (8-bit moments decoded, bfloat16
        ones widened), without pyoptim's own state keys (`sr_seed`, the block scales,
        `master_param`: a master-weights param's master is dropped, its moments cast to the
        param's dtype, as torch.optim would hold them; `kahan_comp`: a param whose only state
        it was, SGD's without momentum, has no entry, as in torch) or group keys (the
        mixed-precision flags, `state_dtype`, `lazy_sparse`). The optimizer itself is not changed.
        state_dict() keeps everything pyoptim needs to resume exactly; this is lossy where the
        format is smaller than torch's."""
        sd = self.state_dict()  # type: ignore[attr-defined]
        pyoptim_keys = (MASTER, SR, STATES, KAHAN, "lazy_sparse")
        maps = self._state_maps
        scale_keys = tuple(scale_key for scale_key, _ in maps.values())
        params = [p for g in self.param_groups for p in g["params"]]  # type: ignore[attr-defined]
        ids = [i for g in sd["param_groups"] for i in g["params"]]
        dtypes = dict(zip(ids, (p.dtype for p in params)))
        state = {}
        for pid, saved in sd["state"].items():
            if pid not in dtypes:  # state of no param (a loaded checkpoint's): as is, as torch
                state[pid] = saved  # copies it
                continue
            out = {}
            for key, value in saved.items():
                if key in (SEED_KEY, MASTER_KEY, KAHAN_KEY, *scale_keys):
                    continue
                if key in maps and isinstance(value, Tensor):
                    value = float_moment(saved, key, maps)
                if (key != "step" and isinstance(value, Tensor) and value.is_floating_point()
                        and value.dtype != dtypes[pid]):
                    value = value.to(dtypes[pid])
                out[key] = value
            if out or not saved:  # (SGD without momentum: Kahan's is its only state, torch's none)
                state[pid] = out
        groups = [{k: v for k, v in g.items() if k not in pyoptim_keys}
                  for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in getattr(self, "_mixed_defaults", {}).items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._check_group(self.param_groups[-1])  # type: ignore[attr-defined]
            check_differentiable(self.param_groups)  # type: ignore[attr-defined]
        except ValueError:
            self.param_groups.pop()  # type: ignore[attr-defined]
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, then pyoptim's own state as saved: torch casts every
        floating state tensor but `step` to its param's dtype, which would round a float32
        master (and the float32 state of a master-weights group) to the param's 16 bits and a
        seed to a float. So `master_param` and `sr_seed` are taken as saved (a copy, on the
        param's device; a seed on the CPU), and in master_weights groups the `_fp32_keys` in
        float32. The modes: torch's load gives every group the checkpoint's hyper-parameters,
        and so the checkpoint's modes where some group of it holds a flag (pyoptim's: a flag
        that is off is not stored, so its groups without one have every mode off); a checkpoint
        without any (torch.optim's, or pyoptim's with every mode off: the same format) keeps
        this optimizer's flags in every group, its state converted at the next step. A
        master-weights param without a master (a torch.optim checkpoint) gets one from the
        param at its next step. All of this reads the state dict torch loads, as the
        load_state_dict pre-hooks made it, before the post-hooks run (load_then)."""
        modes = (MASTER, SR, STATES, KAHAN)
        flags = [{k: g[k] for k in modes if k in g}
                 for g in self.param_groups]  # type: ignore[attr-defined]
        load_then(self, super().load_state_dict,  # type: ignore[misc]
                  state_dict, lambda loaded: self._take_saved(loaded, flags))

    def _take_saved(self, state_dict: dict[str, Any], flags: list[dict]) -> None:
        """load_state_dict's part after torch's: the modes, and the state kept as saved."""
        modes = (MASTER, SR, STATES, KAHAN)
        groups = self.param_groups  # type: ignore[attr-defined]
        if not any(k in g for g in state_dict["param_groups"] for k in modes):
            for group, before in zip(groups, flags):
                group.update(before)
        fp32 = (*self._fp32_keys, MASTER_KEY)
        scale_keys = tuple(scale_key for scale_key, _ in self._state_maps.values())
        for p, group, saved in saved_states(self, state_dict):
            state = self.state[p]  # type: ignore[attr-defined]
            master = group.get(MASTER, False)
            for key, value in saved.items():
                if key == SEED_KEY and isinstance(value, int):  # a seed saved as a number
                    state[key] = torch.tensor(value, dtype=torch.int64)
                    continue
                if not isinstance(value, Tensor) or value.is_sparse:
                    continue
                if key == SEED_KEY:
                    state[key] = value.to("cpu", torch.int64, copy=True)
                elif key == MASTER_KEY or (master and key in fp32):
                    state[key] = value.to(p.device, torch.float32, copy=True)
                elif key in scale_keys:  # block scales: float32, as the ops read them (as
                    # torch's cast gives them for a float32 param)
                    state[key] = value.to(p.device, torch.float32, copy=True)
                elif STATES in group and key in self._state_maps:
                    # reduced states as saved (converted at the next step if the format differs)
                    state[key] = value.to(p.device, copy=True)
