"""CUDA adam_ in its opt-in modes (master weights, stochastic rounding, bfloat16 and 8-bit
moments: csrc/cuda/adam_mixed_kernels.cuh) against the CPU kernel, bit for bit: every output
(params, masters, moments, codes, scales, step counts), for sizes across the 256-element
quantization blocks and the kernels' chunks, with several step counts in one call (several
launches, several keys), a relayout, GradScaler, device-mode master weights, a NaN / inf block of
8-bit moments, and the optimizer classes on CUDA params against the same on CPU.

Self-contained (as tests/test_cuda.py): the CPU op is the reference, itself checked bitwise
against plain PyTorch in tests/test_master.py and tests/test_state_dtype.py. Every test needs a
GPU and a build with the CUDA kernels, and skips without them.
"""

from __future__ import annotations

import op_calls
import pytest
import torch

import pyoptim

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.ops.pyoptim._built_with_cuda()),
    reason="needs a CUDA GPU (none visible) and a build with the CUDA kernels")
pytestmark = needs_gpu

# One element, odd, around one quantization block (256), several blocks with a tail, and one
# tensor over several of the kernels' chunks (16384) with a partial last block.
SIZES = [1, 7, 255, 256, 257, 4099, 300_001]
SEEDS = [7, -3, 2**62 + 5, 0, 1, 99, 12345]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
            torch.float16: torch.int16, torch.int8: torch.int8, torch.uint8: torch.uint8,
            torch.int64: torch.int64}


_hp = op_calls.adam_hp


FLAGS = {
    "adamw": _hp(),
    "adam-l2": _hp(decoupled=False, weight_decay=0.1),
    "maximize-no-wd": _hp(maximize=True, weight_decay=0.0),
    "amsgrad": _hp(amsgrad=True),  # master and stochastic rounding only
}
MODES = ["master-bf16", "master-fp16", "sr", "bfloat16", "8bit"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(INT_VIEW[t.dtype])


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, what: str,
                   any_nan: bool = False) -> None:
    """Bit for bit; with any_nan, a NaN matches any NaN (IEEE leaves a NaN result's payload and
    sign to the implementation: Note [Bitwise agreement across paths])."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert actual.device.type == "cuda" and expected.device.type == "cpu", what
    a, e = _bits(actual), _bits(expected)
    if any_nan and actual.is_floating_point():
        nan_a, nan_e = actual.detach().cpu().isnan(), expected.isnan()
        assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
        a, e = a[~nan_a], e[~nan_e]
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {bad.shape[0]} of {a.numel()} elements differ; first at "
                             f"{i}: {a[i].item()} vs {e[i].item()} (bits)")


def _randn(n, seed, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype)


def case(mode: str, sizes=SIZES, seed=1, amsgrad=False) -> dict:
    """A CPU adam_ call's tensors in `mode`, with step counts 0, 1, 2, 0, ... (several launches)."""
    n = len(sizes)
    steps = [torch.tensor(float(i % 3)) for i in range(n)]
    m = [_randn(k, seed + 100 + i, 0.1) for i, k in enumerate(sizes)]
    v = [_randn(k, seed + 200 + i).abs() * 0.01 for i, k in enumerate(sizes)]
    x = [t + _randn(t.numel(), seed + 300 + i).abs() * 0.01 for i, t in enumerate(v)]
    seeds = [torch.tensor(SEEDS[i % len(SEEDS)] + i, dtype=torch.int64) for i in range(n)]
    if mode.startswith("master"):
        dtype = torch.bfloat16 if mode == "master-bf16" else torch.float16
        params = [_randn(k, seed + i, dtype=dtype) for i, k in enumerate(sizes)]
        masters = [p.float() + _randn(p.numel(), seed + 400 + i, 1e-3)
                   for i, p in enumerate(params)]
        return dict(params=params, master_params=masters, exp_avgs=m, exp_avg_sqs=v,
                    max_exp_avg_sqs=x if amsgrad else [], state_steps=steps)
    if mode == "sr":
        params = [_randn(k, seed + i, dtype=torch.bfloat16) for i, k in enumerate(sizes)]
        return dict(params=params, exp_avgs=[t.bfloat16() for t in m],
                    exp_avg_sqs=[t.bfloat16() for t in v],
                    max_exp_avg_sqs=[t.bfloat16() for t in x] if amsgrad else [],
                    state_steps=steps, sr_seeds=seeds)
    params = [_randn(k, seed + i) for i, k in enumerate(sizes)]
    state = dict(params=params, max_exp_avg_sqs=[], state_steps=steps, sr_seeds=seeds)
    if mode == "bfloat16":
        state.update(exp_avgs=[t.bfloat16() for t in m], exp_avg_sqs=[t.bfloat16() for t in v])
        return state
    enc_m = [torch.ops.pyoptim.quantize_8bit(t, False) for t in m]
    enc_v = [torch.ops.pyoptim.quantize_8bit(t, True) for t in v]
    state.update(exp_avgs=[c for c, _ in enc_m], exp_avg_sqs=[c for c, _ in enc_v],
                 exp_avg_scales=[s for _, s in enc_m], exp_avg_sq_scales=[s for _, s in enc_v])
    return state


def grads_for(state: dict, k: int) -> list[torch.Tensor]:
    return [_randn(p.numel(), 5000 + 31 * k + i, 0.1, p.dtype).view(p.shape)
            for i, p in enumerate(state["params"])]


def to_cuda(state: dict, step_device: str = "cpu") -> dict:
    out = {}
    for key, ts in state.items():
        if key == "sr_seeds":  # a seed lives on the CPU
            out[key] = [t.clone() for t in ts]
        elif key == "state_steps":
            out[key] = [t.to(step_device, copy=True) for t in ts]
        else:
            out[key] = [t.to("cuda", copy=True) for t in ts]
    return out


def run(state: dict, grads, mode: str, hp: dict, **kw) -> None:
    fmt = mode if mode in ("bfloat16", "8bit") else None
    op_calls.adam_(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                   state["max_exp_avg_sqs"], state["state_steps"],
                   master_params=state.get("master_params"), sr_seeds=state.get("sr_seeds"),
                   states=fmt, exp_avg_scales=state.get("exp_avg_scales"),
                   exp_avg_sq_scales=state.get("exp_avg_sq_scales"), **hp, **kw)


def assert_states_equal(gpu: dict, cpu: dict, any_nan: bool = False) -> None:
    """Every output bit for bit; with any_nan, the params' NaNs in position only (the scales of
    a NaN block are the one NaN both kernels store)."""
    assert gpu.keys() == cpu.keys()
    for key in cpu:
        for i, (a, e) in enumerate(zip(gpu[key], cpu[key])):
            if key in ("sr_seeds", "state_steps"):
                assert torch.equal(a.cpu(), e), f"{key}[{i}]"
            else:
                assert_bitwise(a, e, f"{key}[{i}]", any_nan=any_nan and key == "params")


def compare(mode: str, hp: dict, state: dict, n_steps: int = 3, step_device: str = "cpu",
            grad_scale: float | None = None, grads=None, any_nan: bool = False) -> None:
    gpu = to_cuda(state, step_device)
    for k in range(n_steps):
        g = grads if grads is not None else grads_for(state, k)
        kw_cpu, kw_gpu = {}, {}
        if grad_scale is not None:  # GradScaler: grad_scale on the params' device
            kw_cpu = dict(grad_scale=torch.tensor(grad_scale),
                          found_inf=torch.tensor(0.0))
            kw_gpu = dict(grad_scale=torch.tensor(grad_scale, device="cuda"),
                          found_inf=torch.tensor(0.0, device="cuda"))
            g = [t * grad_scale for t in g]
        run(state, g, mode, hp, **kw_cpu)
        run(gpu, [t.to("cuda") for t in g], mode, hp, **kw_gpu)
        torch.cuda.synchronize()
        assert_states_equal(gpu, state, any_nan=any_nan)


# ---- op level ----------------------------------------------------------------------------------

def _mode_flags():
    for mode in MODES:
        for flags in FLAGS:
            if flags == "amsgrad" and mode in ("bfloat16", "8bit"):
                continue  # reduced states take no amsgrad (the op rejects it)
            yield mode, flags


@pytest.mark.parametrize("mode,flags", list(_mode_flags()))
def test_matches_cpu(mode, flags):
    hp = FLAGS[flags]
    compare(mode, hp, case(mode, amsgrad=hp["amsgrad"]))


@pytest.mark.parametrize("mode", MODES)
def test_grad_scale_on_device_matches_cpu(mode):
    compare(mode, _hp(), case(mode, sizes=[7, 257, 4099]), grad_scale=1024.0)


@pytest.mark.parametrize("mode", MODES)
def test_relayout_matches_cpu(mode):
    """A transposed param with row-major state: both ops step row-major copies (the 8-bit blocks
    follow the copy's order) and copy back."""
    state = case(mode, sizes=[65 * 63, 300])
    state["params"][0] = state["params"][0].view(63, 65).t()
    for key in ("master_params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        if state.get(key):
            state[key][0] = state[key][0].view(65, 63)
    state["params"][1] = state["params"][1].view(20, 15)
    for key in ("master_params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        if state.get(key):
            state[key][1] = state[key][1].view(20, 15)
    gpu = to_cuda(state)
    gpu["params"][0] = state["params"][0].t().contiguous().to("cuda").t()  # same strides
    for k in range(2):
        g = [t.view(p.shape) for t, p in zip(grads_for(state, k), state["params"])]
        run(state, g, mode, _hp())
        run(gpu, [t.to("cuda") for t in g], mode, _hp())
        torch.cuda.synchronize()
        assert_states_equal(gpu, state)


@pytest.mark.parametrize("dtype", ["master-bf16", "master-fp16"])
@pytest.mark.parametrize("flags", ["adamw", "amsgrad"])
def test_master_device_steps_match_cpu(dtype, flags):
    """Master weights with the step count on the GPU (capturable / fused): the kernel computes
    the float32 coefficients on the device, and increments the counts there."""
    hp = FLAGS[flags]
    compare(dtype, hp, case(dtype, sizes=[7, 257, 4099], amsgrad=hp["amsgrad"]),
            step_device="cuda")


def test_q8_nan_and_inf_blocks_match_cpu():
    """A NaN grad in one block and an inf grad in another: those blocks get codes 0 and both
    scales NaN (the CPU's bits exactly), the others are stepped as usual; the params' NaNs match
    in position."""
    state = case("8bit", sizes=[1000, 257, 5])
    grads = grads_for(state, 0)
    grads[0][300] = float("nan")  # block 1
    grads[0][700] = float("inf")  # block 2
    grads[1][256] = float("nan")  # the partial last block
    grads[2][0] = float("-inf")   # the whole tensor
    compare("8bit", _hp(), state, n_steps=1, grads=grads, any_nan=True)
    sc = state["exp_avg_scales"]
    assert sc[0][1].isnan() and sc[0][2].isnan() and not sc[0][0].isnan()
    assert sc[1][1].isnan() and not sc[1][0].isnan() and sc[2][0].isnan()


def test_found_inf_skips_the_step():
    state = case("8bit", sizes=[7, 300])
    gpu = to_cuda(state)
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    run(gpu, [t.to("cuda") for t in grads_for(state, 0)], "8bit", _hp(),
        grad_scale=torch.tensor(2.0, device="cuda"), found_inf=torch.tensor(1.0, device="cuda"))
    for key in gpu:
        for a, b in zip(gpu[key], before[key]):
            assert torch.equal(a, b), key


@pytest.mark.parametrize("mode", ["sr", "bfloat16", "8bit"])
def test_seeded_modes_reject_device_steps_before_writing(mode):
    """Their random bits are keyed by the step count, which the host reads: a count on the GPU
    raises, and nothing is written."""
    state = case(mode, sizes=[7, 300])
    gpu = to_cuda(state)
    gpu["state_steps"][1] = gpu["state_steps"][1].to("cuda")
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    with pytest.raises(NotImplementedError, match="need the step count on the CPU"):
        run(gpu, [t.to("cuda") for t in grads_for(state, 0)], mode, _hp())
    for key in gpu:
        for a, b in zip(gpu[key], before[key]):
            assert torch.equal(a.cpu(), b.cpu()), key


# ---- optimizer classes ---------------------------------------------------------------------------

def _model(dtype, device):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype).to(device))
            for n in (37, 256, 300_001, 5)]


def _set_grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.1).to(p.dtype).to(p.device)


CLASS_CASES = {
    "master-bf16": (torch.bfloat16, dict(master_weights=True, amsgrad=True)),
    "master-fp16": (torch.float16, dict(master_weights=True)),
    "master-fused": (torch.bfloat16, dict(master_weights=True, fused=True)),
    "sr": (torch.bfloat16, dict(stochastic_rounding=True)),
    "bfloat16": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "8bit": (torch.float32, dict(state_dtype="8bit")),
}


@pytest.mark.parametrize("cls", [pyoptim.Adam, pyoptim.AdamW])
@pytest.mark.parametrize("name", list(CLASS_CASES))
def test_optimizer_matches_cpu(cls, name):
    dtype, kw = CLASS_CASES[name]
    runs = {}
    for device in ("cpu", "cuda"):
        if device == "cpu" and kw.get("fused"):
            kw_dev = {k: v for k, v in kw.items() if k != "fused"}  # the CPU run: host counts
        else:
            kw_dev = kw
        params = _model(dtype, device)
        torch.manual_seed(3)  # the same seeds (drawn on the CPU at the first step)
        opt = cls(params, lr=1e-2, weight_decay=0.05, **kw_dev)
        for k in range(3):
            _set_grads(params, k)
            opt.step()
        runs[device] = (params, opt)
    (p_cpu, opt_cpu), (p_gpu, opt_gpu) = runs["cpu"], runs["cuda"]
    for i, (a, e) in enumerate(zip(p_gpu, p_cpu)):
        assert_bitwise(a, e, f"param {i}")
        st_gpu, st_cpu = opt_gpu.state[a], opt_cpu.state[e]
        assert st_gpu.keys() == st_cpu.keys()
        for key in st_cpu:
            if key == "sr_seed":
                assert st_gpu[key].device.type == "cpu"
                assert torch.equal(st_gpu[key], st_cpu[key])
            elif key == "step":
                assert float(st_gpu[key]) == float(st_cpu[key]) == 3.0
            else:
                assert st_gpu[key].device.type == "cuda", key
                assert_bitwise(st_gpu[key], st_cpu[key], f"param {i} {key}")


def test_optimizer_reduced_states_with_capturable_raise_before_writing():
    params = _model(torch.float32, "cuda")
    opt = pyoptim.AdamW(params, state_dtype="8bit", capturable=True)
    _set_grads(params, 0)
    before = [p.detach().clone() for p in params]
    with pytest.raises(NotImplementedError, match="need the step count on the CPU"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("name", ["master-bf16", "sr", "bfloat16", "8bit"])
def test_checkpoint_moves_between_devices(name):
    """A CUDA run's state_dict loaded into an optimizer on the CPU, and a CPU run's into one on
    CUDA, continue bit for bit as a run that stayed on the CPU (the seed stays on the CPU; the
    masters, moments, codes and scales follow the params)."""
    dtype, kw = CLASS_CASES[name]

    def make(device):
        params = _model(dtype, device)
        torch.manual_seed(3)
        return params, pyoptim.AdamW(params, lr=1e-2, weight_decay=0.05, **kw)

    ref_p, ref = make("cpu")
    for k in range(3):
        _set_grads(ref_p, k)
        ref.step()
    for first, second in (("cuda", "cpu"), ("cpu", "cuda")):
        p1, opt1 = make(first)
        for k in range(2):
            _set_grads(p1, k)
            opt1.step()
        p2, opt2 = make(second)
        with torch.no_grad():
            for a, b in zip(p2, p1):
                a.copy_(b)
        opt2.load_state_dict(opt1.state_dict())
        _set_grads(p2, 2)
        opt2.step()
        for i, (a, e) in enumerate(zip(p2, ref_p)):
            assert torch.equal(_bits(a), _bits(e)), f"{first} -> {second}: param {i}"
            for key, value in ref.state[e].items():
                got = opt2.state[a][key]
                if key == "sr_seed":
                    assert got.device.type == "cpu"
                if key == "step":
                    assert float(got) == float(value)
                else:
                    assert torch.equal(_bits(got), _bits(value)), f"{first} -> {second}: {key}"
