"""Hypothesis strategies and case builders shared by the op-level tests.

Tensor *contents* come from a seeded torch.Generator (a drawn seed), not from hypothesis lists
of floats: sizes up to 65537 stay cheap, and shrinking still works on the seed, the sizes and
the hyper-parameters. Sizes sit around the vector widths (8 floats for AVX2, 16 for AVX-512,
32 bfloat16/half for AVX-512) so the SIMD body, the scalar tail and both together are hit.
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16",
             torch.float16: "f16"}

# around 8/16/32-element vectors, plus odd large sizes that leave a tail after many vectors
EDGE_SIZES = (0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65, 127, 129, 4099, 65537)

sizes = st.one_of(st.sampled_from(EDGE_SIZES), st.integers(min_value=0, max_value=300))
dtypes = st.sampled_from(DTYPES)

# lr from the range people use (1e-5 .. 1e-1), log-uniform-ish
lrs = st.one_of(
    st.sampled_from([1e-3, 1e-2, 1e-1]),
    st.floats(min_value=-5.0, max_value=-1.0).map(lambda e: 10.0**e),
)
# beta1 below 0.5 makes lerp's weight 1 - beta1 >= 0.5: torch.lerp's other formula
beta1s = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.9]),
                   st.floats(min_value=0.0, max_value=0.999))
beta2s = st.one_of(st.sampled_from([0.0, 0.5, 0.999]), st.floats(min_value=0.0, max_value=0.9999))
epss = st.one_of(st.sampled_from([1e-8, 1e-6]),
                 st.floats(min_value=-12.0, max_value=-1.0).map(lambda e: 10.0**e))
weight_decays = st.one_of(st.just(0.0), st.sampled_from([1e-2, 0.1]),
                          st.floats(min_value=1e-5, max_value=0.5))
initial_steps = st.sampled_from([0, 0, 1, 9, 1000])  # step count before the first call
n_steps = st.integers(min_value=1, max_value=3)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
# magnitudes of grads (the kernels must be right for tiny and large gradients alike)
grad_scales_of_values = st.sampled_from([1e-3, 1.0, 10.0])
# GradScaler-like scales: powers of two (what GradScaler uses) and an arbitrary one
amp_scales = st.one_of(st.none(), st.sampled_from([2.0**16, 0.5, 3.0]))


@st.composite
def adam_hparams(draw, decoupled: bool | None = None) -> dict:
    return dict(
        lr=draw(lrs),
        beta1=draw(beta1s),
        beta2=draw(beta2s),
        weight_decay=draw(weight_decays),
        eps=draw(epss),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
        decoupled=draw(st.booleans()) if decoupled is None else decoupled,
    )


@dataclasses.dataclass
class AdamCase:
    """Everything one op-level Adam test needs; `tensors()` builds fresh inputs."""

    sizes: list
    dtype: torch.dtype
    hp: dict
    seed: int
    step0: int = 0
    grad_magnitude: float = 1.0
    amp_scale: float | None = None
    skips: tuple = ()  # per step: True = GradScaler found inf (the step is skipped)

    @property
    def steps(self) -> int:
        return len(self.skips)

    def state(self) -> dict:
        """Params and state (a dict of tensor lists) in `dtype`, deterministic in `seed`."""
        g = torch.Generator().manual_seed(self.seed)
        def rnd(n, scale=1.0):
            return (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(self.dtype)
        params = [rnd(n) for n in self.sizes]
        exp_avgs = [rnd(n, 0.1) for n in self.sizes]
        if self.step0 == 0:
            exp_avgs = [torch.zeros_like(p) for p in params]
        exp_avg_sqs = [rnd(n, 0.1).abs() if self.step0 else torch.zeros_like(p)
                       for n, p in zip(self.sizes, params)]
        max_sqs = ([(v.double() + rnd(n, 0.01).abs().double()).to(self.dtype)
                    for n, v in zip(self.sizes, exp_avg_sqs)]
                   if self.hp["amsgrad"] else [])
        steps = [torch.tensor(float(self.step0), dtype=torch.float32) for _ in self.sizes]
        return dict(params=params, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                    max_exp_avg_sqs=max_sqs, state_steps=steps)

    def grads(self, k: int) -> list:
        """Step k's grads (already multiplied by amp_scale when there is one), in `dtype`."""
        g = torch.Generator().manual_seed(self.seed * 7919 + 104729 * (k + 1))
        scale = self.grad_magnitude * (self.amp_scale or 1.0)
        return [(torch.randn(n, generator=g, dtype=torch.float64) * scale).to(self.dtype)
                for n in self.sizes]

    def extras(self, k: int) -> dict:
        """grad_scale / found_inf keyword arguments of step k."""
        out = {}
        if self.amp_scale is not None:
            out["grad_scale"] = torch.tensor(self.amp_scale, dtype=torch.float32)
        if self.skips and self.skips[k]:
            out["found_inf"] = torch.tensor(1.0, dtype=torch.float32)
        elif self.amp_scale is not None:
            out["found_inf"] = torch.tensor(0.0, dtype=torch.float32)
        return out


@st.composite
def adam_cases(draw, dtype=None, min_tensors=1, max_tensors=3, skips=True) -> AdamCase:
    tensor_sizes = draw(st.lists(sizes, min_size=min_tensors, max_size=max_tensors)
                        .filter(lambda s: sum(s) > 0))
    n = draw(n_steps)
    skip_pattern = (tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))) if skips
                    else (False,) * n)
    if all(skip_pattern):  # at least one step must run, or there is nothing to test
        skip_pattern = skip_pattern[:-1] + (False,)
    dtype = draw(dtypes) if dtype is None else dtype
    amp = draw(amp_scales)
    if amp is not None and dtype == torch.float16 and amp > 64.0:
        amp = 64.0  # float16 grads * 2^16 overflow: GradScaler would report inf (found_inf)
    return AdamCase(
        sizes=tensor_sizes,
        dtype=dtype,
        hp=draw(adam_hparams()),
        seed=draw(seeds),
        step0=draw(initial_steps),
        grad_magnitude=draw(grad_scales_of_values),
        amp_scale=amp,
        skips=skip_pattern,
    )


def clone_state(state: dict, dtype: torch.dtype | None = None) -> dict:
    """Deep copy of a state dict of lists (step counts keep their own dtype)."""
    out = {}
    for key, lst in state.items():
        if key == "state_steps":
            out[key] = [t.clone() for t in lst]
        else:
            out[key] = [t.to(dtype, copy=True) if dtype is not None else t.clone() for t in lst]
    return out


def op_args(state: dict, grads: list) -> tuple:
    """Positional arguments of pyoptim.adam_ (and the reference) from a state dict."""
    return (state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
            state["max_exp_avg_sqs"], state["state_steps"])
