"""Mixed precision for 16-bit params: the `master_weights=` / `stochastic_rounding=` flags of
pyoptim.Adam, AdamW (both) and SGD (master_weights, with momentum), their checks and their
checkpoints. The kernels and the design: Note [Master weights and stochastic rounding] in
csrc/include/pyoptim/math/stochastic_round.h.

The flags are constructor kwargs stored in each param group (off by default, so the default is
torch's behaviour; a group may set its own). A flag that is off is not stored: an optimizer
without them has torch's defaults, param groups and state_dict exactly. State added per param:
`master_param` (a float32 copy of the param; the optimizer's other float state is float32 too
in master groups) or `sr_seed` (an int64 CPU tensor). state_dict() is torch's, with these keys
added; load_state_dict keeps them as saved (below).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

MASTER, SR = "master_weights", "stochastic_rounding"
MASTER_KEY, SEED_KEY = "master_param", "sr_seed"


def init_master(state: dict, p: Tensor, fp32_keys: Sequence[str]) -> None:
    """A master-weights param's float32 state: the master (from the param where the state has
    none, e.g. loaded from a torch.optim checkpoint) and `fp32_keys` in float32."""
    if MASTER_KEY not in state:
        state[MASTER_KEY] = p.detach().to(torch.float32, memory_format=torch.preserve_format,
                                          copy=True)
    for key in fp32_keys:
        value = state.get(key)
        if isinstance(value, Tensor) and value.dtype != torch.float32:
            state[key] = value.to(torch.float32)


class MixedPrecision:
    """The flags, their checks and checkpoints; between the FusedStep class and the torch
    class in an optimizer's MRO. A class says which flags it takes (`_mixed_flags`) and which
    of its state keys are float32 in master groups (`_fp32_keys`)."""

    _mixed_flags: tuple[str, ...] = (MASTER, SR)
    _fp32_keys: tuple[str, ...] = ()

    def __init__(self, params: Any, *args: Any, master_weights: bool = False,
                 stochastic_rounding: bool = False, **kwargs: Any) -> None:
        if stochastic_rounding and SR not in self._mixed_flags:
            raise TypeError(f"{type(self).__name__} does not take stochastic_rounding=True "
                            "(Adam and AdamW do)")
        on = {MASTER: bool(master_weights), SR: bool(stochastic_rounding)}
        self._mixed_defaults = {key: True for key, value in on.items() if value}
        super().__init__(params, *args, **kwargs)  # type: ignore[call-arg]
        self.defaults.update(self._mixed_defaults)  # type: ignore[attr-defined]

    def _check_group(self, group: dict) -> None:
        """Clear errors at construction (and in add_param_group) rather than at a step."""
        master, sr = group.get(MASTER, False), group.get(SR, False)
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
        if master and group.get("momentum", 1) == 0:  # SGD: the buffer holds the float32 state
            raise ValueError("master_weights=True needs momentum != 0 (SGD with momentum)")
        for p in group["params"]:
            if master and p.dtype not in (torch.bfloat16, torch.float16):
                raise ValueError(
                    f"master_weights=True needs bfloat16 or float16 params, got a {p.dtype} "
                    "param (a float32 param is its own master)")
            if sr and p.dtype != torch.bfloat16:
                raise ValueError(
                    f"stochastic_rounding=True needs bfloat16 params, got a {p.dtype} param")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in getattr(self, "_mixed_defaults", {}).items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)  # type: ignore[misc]
        try:
            self._check_group(self.param_groups[-1])  # type: ignore[attr-defined]
        except ValueError:
            self.param_groups.pop()  # type: ignore[attr-defined]
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, then pyoptim's own state as saved: torch casts every
        floating state tensor but `step` to its param's dtype, which would round a float32
        master (and the float32 state of a master-weights group) to the param's 16 bits and a
        seed to a float. So `master_param` and `sr_seed` are taken as saved (a copy, on the
        param's device; a seed on the CPU), and in master_weights groups the `_fp32_keys` in
        float32. Groups from a checkpoint without the flags (torch.optim's) keep this
        optimizer's setting; a master-weights param without a master (a torch.optim checkpoint)
        gets one from the param at its next step."""
        flags = [{k: g[k] for k in (MASTER, SR) if k in g}
                 for g in self.param_groups]  # type: ignore[attr-defined]
        super().load_state_dict(state_dict)  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        for group, before in zip(groups, flags):
            for key, value in before.items():
                group.setdefault(key, value)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [(p, g) for g in groups for p in g["params"]]
        saved_state = state_dict["state"]
        fp32 = (*self._fp32_keys, MASTER_KEY)
        for pid, (p, group) in zip(saved_ids, params):
            saved = saved_state.get(pid)
            if not saved:
                continue
            state = self.state[p]  # type: ignore[attr-defined]
            master = group.get(MASTER, False)
            for key, value in saved.items():
                if not isinstance(value, Tensor) or value.is_sparse:
                    continue
                if key == SEED_KEY:
                    state[key] = value.to("cpu", torch.int64, copy=True)
                elif key == MASTER_KEY or (master and key in fp32):
                    state[key] = value.to(p.device, torch.float32, copy=True)
