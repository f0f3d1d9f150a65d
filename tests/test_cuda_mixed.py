"""CUDA adam_ in its opt-in modes (master weights, stochastic rounding, bfloat16 and 8-bit
moments, Kahan-compensated 16-bit params: csrc/cuda/adam_mixed_kernels.cuh) against the CPU
kernel, bit for bit: every output (params, masters, moments, codes, scales, compensations, step
counts), for sizes across the 256-element quantization blocks, the CPU's vector widths and the
kernels' chunks, with several step counts in one call (several launches, several keys), a
relayout, GradScaler, device-mode master weights and Kahan, several param groups in one call, a
NaN / inf block of 8-bit moments, and the optimizer classes on CUDA params against the same on
CPU.

Self-contained (as tests/test_cuda.py): the CPU op is the reference, itself checked bitwise
against plain PyTorch in tests/test_master.py and tests/test_state_dtype.py. Every test needs a
GPU and a build with the CUDA kernels, and skips without them.
"""

from __future__ import annotations

import op_calls
import pytest
import torch
from cuda_compare import SEEDS, SIZES, assert_bitwise, needs_gpu
from cuda_compare import bits as _bits
from cuda_compare import randn as _randn

import pyoptim

pytestmark = needs_gpu

_hp = op_calls.adam_hp


FLAGS = {
    "adamw": _hp(),
    "adam-l2": _hp(decoupled=False, weight_decay=0.1),
    "maximize-no-wd": _hp(maximize=True, weight_decay=0.0),
    "amsgrad": _hp(amsgrad=True),  # master, stochastic rounding and Kahan only
}
MODES = ["master-bf16", "master-fp16", "sr", "bfloat16", "8bit", "kahan-bf16", "kahan-fp16"]
# Kahan: around the CPU's vector widths (8 / 16 lanes, twice that paired for 16-bit values), as
# the CPU op has its vector body, paired body and scalar tail there; and across a chunk (16384).
KAHAN_SIZES = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 16385, 4099]


def case(mode: str, sizes=SIZES, seed=1, amsgrad=False) -> dict:
    """A CPU adam_ call's tensors in `mode`, with step counts 0, 1, 2, 0, ... (several launches)."""
    n = len(sizes)
    steps = [torch.tensor(float(i % 3)) for i in range(n)]
    m = [_randn(k, seed + 100 + i, 0.1) for i, k in enumerate(sizes)]
    v = [_randn(k, seed + 200 + i).abs() * 0.01 for i, k in enumerate(sizes)]
    x = [t + _randn(t.numel(), seed + 300 + i).abs() * 0.01 for i, t in enumerate(v)]
    seeds = [torch.tensor(SEEDS[i % len(SEEDS)] + i, dtype=torch.int64) for i in range(n)]
    if mode.startswith("kahan"):  # the moments and the compensation in the param's dtype
        dtype = torch.bfloat16 if mode == "kahan-bf16" else torch.float16
        params = [_randn(k, seed + i, dtype=dtype) for i, k in enumerate(sizes)]
        comps = [_randn(k, seed + 400 + i, 1e-3, dtype) for i, k in enumerate(sizes)]
        return dict(params=params, exp_avgs=[t.to(dtype) for t in m],
                    exp_avg_sqs=[t.to(dtype) for t in v],
                    max_exp_avg_sqs=[t.to(dtype) for t in x] if amsgrad else [],
                    state_steps=steps, kahan_comps=comps)
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
                   exp_avg_sq_scales=state.get("exp_avg_sq_scales"),
                   kahan_comps=state.get("kahan_comps"), **hp, **kw)


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
    keys = ("master_params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "kahan_comps")
    state["params"][0] = state["params"][0].view(63, 65).t()
    for key in keys:
        if state.get(key):
            state[key][0] = state[key][0].view(65, 63)
    state["params"][1] = state["params"][1].view(20, 15)
    for key in keys:
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


@pytest.mark.parametrize("mode", ["master-bf16", "master-fp16", "kahan-bf16", "kahan-fp16"])
@pytest.mark.parametrize("flags", ["adamw", "amsgrad"])
def test_device_steps_match_cpu(mode, flags):
    """Master weights and Kahan (no random bits) with the step count on the GPU (capturable /
    fused): the kernel computes the float32 coefficients on the device, and increments the
    counts there."""
    hp = FLAGS[flags]
    compare(mode, hp, case(mode, sizes=[7, 257, 4099], amsgrad=hp["amsgrad"]),
            step_device="cuda")


# ---- Kahan --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["kahan-bf16", "kahan-fp16"])
@pytest.mark.parametrize("flags", list(FLAGS))
def test_kahan_sizes_match_cpu(mode, flags):
    """Sizes around the CPU's vector widths and a chunk: the CPU's paired, vector and scalar
    paths and the GPU's one thread per element give the same bits; the compensations move."""
    hp = FLAGS[flags]
    state = case(mode, sizes=KAHAN_SIZES, amsgrad=hp["amsgrad"])
    before = [t.clone() for t in state["kahan_comps"]]
    compare(mode, hp, state)
    assert any(not torch.equal(a, b) for a, b in zip(state["kahan_comps"], before))


@pytest.mark.parametrize("mode", ["kahan-bf16", "kahan-fp16"])
@pytest.mark.parametrize("step_device", ["cpu", "cuda"])
def test_kahan_grad_scale_matches_cpu(mode, step_device):
    """GradScaler's grad_scale on the GPU, read by the kernel (host or device step counts)."""
    compare(mode, _hp(decoupled=False, weight_decay=0.1, amsgrad=True),
            case(mode, sizes=[7, 33, 4099], amsgrad=True), step_device=step_device,
            grad_scale=512.0)


KAHAN_GROUPS = [  # (mode, sizes, adam_ keyword arguments of the group)
    ("kahan-bf16", [33, 4099], _hp(amsgrad=True)),
    ("kahan-fp16", [17, 300], _hp(decoupled=False, weight_decay=0.1, maximize=True)),
    ("plain-bf16", [65], _hp(lr=3e-3)),
    ("kahan-bf16", [1, 16385], _hp(weight_decay=0.0, beta1=0.8)),
]


def _group_call(groups: list[dict], grads, **kw) -> None:
    """One adam_ call over several groups (Note [Param groups in one call])."""
    cat = {key: [t for g in groups for t in g[key]]
           for key in ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps",
                       "kahan_comps")}
    hyper, flags = [], []
    for g in groups:
        hp = g["hp"]
        hyper += [hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"], hp["eps"]]
        flags += [hp["amsgrad"], hp["maximize"], hp["decoupled"], False, False, False, False,
                  bool(g["kahan_comps"])]
    torch.ops.pyoptim.adam_.default(
        cat["params"], grads, cat["exp_avgs"], cat["exp_avg_sqs"], cat["max_exp_avg_sqs"],
        cat["state_steps"], group_sizes=[len(g["params"]) for g in groups], hyper=hyper,
        flags=flags, lr_tensors=[], kahan_comps=cat["kahan_comps"], **kw)


@pytest.mark.parametrize("step_device", ["cpu", "cuda"])
def test_kahan_param_groups_match_cpu(step_device):
    """Kahan groups of both dtypes with different flags next to a plain 16-bit group, in one
    call: each group its own launches, every output bit for bit."""
    cpu = []
    for k, (mode, sizes, hp) in enumerate(KAHAN_GROUPS):
        if mode == "plain-bf16":
            g = case("kahan-bf16", sizes=sizes, seed=50 + k, amsgrad=hp["amsgrad"])
            g["kahan_comps"] = []
        else:
            g = case(mode, sizes=sizes, seed=50 + k, amsgrad=hp["amsgrad"])
        cpu.append(g)
    gpu = [to_cuda(g, step_device) for g in cpu]
    for g_cpu, g_gpu, (_, _, hp) in zip(cpu, gpu, KAHAN_GROUPS):
        g_cpu["hp"] = g_gpu["hp"] = hp
    for k in range(3):
        grads = [t for g in cpu for t in grads_for(g, k)]
        _group_call(cpu, grads)
        _group_call(gpu, [t.to("cuda") for t in grads])
        torch.cuda.synchronize()
        for g_gpu, g_cpu in zip(gpu, cpu):
            assert_states_equal({key: v for key, v in g_gpu.items() if key != "hp"},
                                {key: v for key, v in g_cpu.items() if key != "hp"})


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


@pytest.mark.parametrize("mode,step_device", [("8bit", "cpu"), ("kahan-bf16", "cpu"),
                                              ("kahan-fp16", "cuda")])
def test_found_inf_skips_the_step(mode, step_device):
    """found_inf on the GPU: read on the host (host counts) or by the kernels (device counts);
    nothing is written and no step is counted."""
    state = case(mode, sizes=[7, 300])
    gpu = to_cuda(state, step_device)
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    run(gpu, [t.to("cuda") for t in grads_for(state, 0)], mode, _hp(),
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
    "kahan-bf16": (torch.bfloat16, dict(kahan_summation=True, amsgrad=True)),
    "kahan-fp16": (torch.float16, dict(kahan_summation=True, maximize=True)),
    "kahan-fused": (torch.bfloat16, dict(kahan_summation=True, fused=True)),
    "kahan-capturable": (torch.float16, dict(kahan_summation=True, capturable=True)),
}
ON_DEVICE_ONLY = ("fused", "capturable")  # the CPU run: host counts


@pytest.mark.parametrize("cls", [pyoptim.Adam, pyoptim.AdamW])
@pytest.mark.parametrize("name", list(CLASS_CASES))
def test_optimizer_matches_cpu(cls, name):
    dtype, kw = CLASS_CASES[name]
    runs = {}
    for device in ("cpu", "cuda"):
        if device == "cpu":
            kw_dev = {k: v for k, v in kw.items() if k not in ON_DEVICE_ONLY}
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


@pytest.mark.parametrize("name", ["master-bf16", "sr", "bfloat16", "8bit", "kahan-bf16"])
def test_checkpoint_moves_between_devices(name):
    """A CUDA run's state_dict loaded into an optimizer on the CPU, and a CPU run's into one on
    CUDA, continue bit for bit as a run that stayed on the CPU (the seed stays on the CPU; the
    masters, moments, codes, scales and compensations follow the params)."""
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
