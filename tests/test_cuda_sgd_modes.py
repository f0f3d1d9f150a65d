"""CUDA sgd_ in its opt-in modes (master weights, stochastic rounding of bfloat16 params, a
bfloat16 or 8-bit momentum buffer for float32 params, Kahan-compensated bfloat16 / float16
params with or without momentum: csrc/cuda/sgd_mixed_kernels.cuh) against
the CPU kernel, bit for bit: every output (params, masters, buffers, codes, scales, seeds), for
sizes across the 256-element quantization blocks and the kernels' chunks, the buffer's first step
then two more, GradScaler (scale and found_inf on the GPU), a Tensor lr on the GPU, a relayout, a
NaN / inf block of the 8-bit buffer, found_inf skipping (seeds unchanged), and pyoptim.SGD on
CUDA params against the same on CPU.

Self-contained (as tests/test_cuda.py): the CPU op is the reference, itself checked bitwise
against plain PyTorch in tests/test_master.py and tests/test_sgd_modes.py. Every test needs a
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

DEV = "cuda"
MODES = ["master-bf16", "master-fp16", "sr", "bfloat16", "8bit", "kahan-bf16", "kahan-fp16"]
FLAGS = {
    **op_calls.SGD_MOMENTUM_FLAGS,
    "grad-scale": dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=False,
                       maximize=False),  # with GradScaler's scale (compare's grad_scale)
}


def case(mode: str, sizes=SIZES, seed=1) -> dict:
    """A CPU sgd_ call's tensors in `mode`. The buffers (and 8-bit scales) hold garbage: the
    first step writes them without reading them."""
    n = len(sizes)
    junk = [_randn(k, seed + 100 + i, 3.0) for i, k in enumerate(sizes)]
    seeds = [torch.tensor(SEEDS[i % len(SEEDS)] + i, dtype=torch.int64) for i in range(n)]
    if mode.startswith("master"):
        dtype = torch.bfloat16 if mode == "master-bf16" else torch.float16
        params = [_randn(k, seed + i, dtype=dtype) for i, k in enumerate(sizes)]
        masters = [p.float() + _randn(p.numel(), seed + 400 + i, 1e-3)
                   for i, p in enumerate(params)]
        return dict(params=params, master_params=masters, bufs=junk)
    if mode.startswith("kahan"):  # the buffer and the compensation in the param's dtype
        dtype = torch.bfloat16 if mode == "kahan-bf16" else torch.float16
        params = [_randn(k, seed + i, dtype=dtype) for i, k in enumerate(sizes)]
        comps = [_randn(k, seed + 600 + i, 1e-3, dtype) for i, k in enumerate(sizes)]
        return dict(params=params, bufs=[t.to(dtype) for t in junk], kahan_comps=comps)
    if mode == "sr":
        params = [_randn(k, seed + i, dtype=torch.bfloat16) for i, k in enumerate(sizes)]
        return dict(params=params, bufs=[t.bfloat16() for t in junk], sr_seeds=seeds)
    params = [_randn(k, seed + i) for i, k in enumerate(sizes)]
    if mode == "bfloat16":
        return dict(params=params, bufs=[t.bfloat16() for t in junk], sr_seeds=seeds)
    codes = [t.clamp(-127, 127).to(torch.int8) for t in junk]
    scales = [_randn(-(-k // 256), seed + 500 + i).abs() for i, k in enumerate(sizes)]
    return dict(params=params, bufs=codes, buffer_scales=scales, sr_seeds=seeds)


def grads_for(state: dict, k: int) -> list[torch.Tensor]:
    return [_randn(p.numel(), 5000 + 31 * k + i, 0.1, p.dtype).view(p.shape)
            for i, p in enumerate(state["params"])]


def to_dev(state: dict) -> dict:
    out = {}
    for key, ts in state.items():
        if key == "sr_seeds":  # a seed lives on the CPU
            out[key] = [t.clone() for t in ts]
        else:
            out[key] = [t.to(DEV, copy=True) for t in ts]
    return out


def run(state: dict, grads, mode: str, hp: dict, first: bool, **kw) -> None:
    fmt = mode if mode in ("bfloat16", "8bit") else None
    op_calls.sgd_(state["params"], grads, state["bufs"], is_first_step=first,
                  master_params=state.get("master_params"), sr_seeds=state.get("sr_seeds"),
                  states=fmt, buffer_scales=state.get("buffer_scales"),
                  kahan_comps=state.get("kahan_comps"), **hp, **kw)


def assert_states_equal(gpu: dict, cpu: dict, any_nan: bool = False) -> None:
    """Every output bit for bit; with any_nan, the params' NaNs in position only (a NaN block's
    scale is the one NaN both kernels store)."""
    assert gpu.keys() == cpu.keys()
    for key in cpu:
        for i, (a, e) in enumerate(zip(gpu[key], cpu[key])):
            if key == "sr_seeds":
                assert a.device.type == "cpu" and torch.equal(a, e), f"{key}[{i}]"
            else:
                assert_bitwise(a, e, f"{key}[{i}]",
                               any_nan=any_nan and key in ("params", "master_params"))


def compare(mode: str, hp: dict, state: dict, n_steps: int = 3, grad_scale: float | None = None,
            grads=None, any_nan: bool = False, lr_tensor: bool = False,
            first_step: bool = True) -> None:
    """n_steps calls of the CPU op and the CUDA op on copies of `state`: the first a first step
    (unless first_step is False), then the buffer's next steps."""
    gpu = to_dev(state)
    for k in range(n_steps):
        g = grads if grads is not None else grads_for(state, k)
        kw_cpu, kw_gpu = {}, {}
        if grad_scale is not None:  # GradScaler: scale and found_inf on the params' device
            kw_cpu = dict(grad_scale=torch.tensor(grad_scale), found_inf=torch.tensor(0.0))
            kw_gpu = dict(grad_scale=torch.tensor(grad_scale, device=DEV),
                          found_inf=torch.tensor(0.0, device=DEV))
            g = [t * grad_scale for t in g]
        if lr_tensor:
            kw_cpu["lr_tensor"] = torch.tensor(hp["lr"])
            kw_gpu["lr_tensor"] = torch.tensor(hp["lr"], device=DEV)
        first = first_step and k == 0
        run(state, g, mode, hp, first, **kw_cpu)
        run(gpu, [t.to(DEV) for t in g], mode, hp, first, **kw_gpu)
        torch.cuda.synchronize()
        assert_states_equal(gpu, state, any_nan=any_nan)


# ---- op level ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("mode", MODES)
def test_matches_cpu(mode, flags):
    scale = 1024.0 if flags == "grad-scale" else None
    compare(mode, FLAGS[flags], case(mode), grad_scale=scale)


@pytest.mark.parametrize("mode", MODES)
def test_seeds_advance_once_per_step(mode):
    state = case(mode, sizes=[7, 300])
    compare(mode, FLAGS["momentum"], state)
    if "sr_seeds" in state:
        assert [int(s) for s in state["sr_seeds"]] == [SEEDS[0] + 3, SEEDS[1] + 1 + 3]


@pytest.mark.parametrize("mode", MODES)
def test_lr_tensor_on_device_matches_cpu(mode):
    compare(mode, FLAGS["nesterov-wd"], case(mode, sizes=[7, 257, 4099]), lr_tensor=True)


@pytest.mark.parametrize("mode", MODES)
def test_relayout_matches_cpu(mode):
    """A transposed param with row-major state: both ops step row-major copies (the 8-bit blocks
    follow the copy's order) and copy back; on the first step the buffer is not copied in."""
    state = case(mode, sizes=[65 * 63, 300])
    state["params"][0] = state["params"][0].view(63, 65).t()
    state["params"][1] = state["params"][1].view(20, 15)
    for key in ("master_params", "bufs", "kahan_comps"):
        if key in state:
            state[key][0] = state[key][0].view(65, 63)
            state[key][1] = state[key][1].view(20, 15)
    gpu = to_dev(state)
    gpu["params"][0] = state["params"][0].t().to(DEV, copy=True).t()  # same strides
    for k in range(3):
        g = [t.view(p.shape) for t, p in zip(grads_for(state, k), state["params"])]
        run(state, g, mode, FLAGS["nesterov-wd"], k == 0)
        run(gpu, [t.to(DEV) for t in g], mode, FLAGS["nesterov-wd"], k == 0)
        torch.cuda.synchronize()
        assert_states_equal(gpu, state)


@pytest.mark.parametrize("flags", list(op_calls.SGD_PLAIN_FLAGS))
@pytest.mark.parametrize("mode", ["kahan-bf16", "kahan-fp16"])
def test_kahan_without_momentum_matches_cpu(mode, flags):
    """Kahan without momentum (no buffer: the compensation is the only state), with GradScaler's
    scale and found_inf on the GPU too."""
    state = case(mode)
    state["bufs"] = []
    compare(mode, op_calls.SGD_PLAIN_FLAGS[flags], state)
    compare(mode, op_calls.SGD_PLAIN_FLAGS[flags], state, grad_scale=512.0)


def test_q8_nan_and_inf_blocks_match_cpu():
    """A NaN grad in one block and an inf grad in another: those blocks get codes 0 and scale
    NaN (the CPU's bits exactly), the others are stepped as usual; the params' NaNs match in
    position. Then a step from that state (the NaN blocks decode to NaN)."""
    state = case("8bit", sizes=[1000, 257, 5])
    gpu = to_dev(state)
    hp = FLAGS["momentum"]
    for k in range(3):
        g = grads_for(state, k)
        if k == 1:
            g[0][300] = float("nan")  # block 1
            g[0][700] = float("inf")  # block 2
            g[1][256] = float("nan")  # the partial last block
            g[2][0] = float("-inf")   # the whole tensor
        run(state, g, "8bit", hp, k == 0)
        run(gpu, [t.to(DEV) for t in g], "8bit", hp, k == 0)
        torch.cuda.synchronize()
        assert_states_equal(gpu, state, any_nan=True)
        if k == 1:
            sc = state["buffer_scales"]
            assert sc[0][1].isnan() and sc[0][2].isnan() and not sc[0][0].isnan()
            assert sc[1][1].isnan() and not sc[1][0].isnan() and sc[2][0].isnan()
            assert (state["bufs"][0][256:768] == 0).all()


@pytest.mark.parametrize("inf_device", [DEV, "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_found_inf_skips_the_step(mode, inf_device):
    """found_inf set (GradScaler found inf/NaN grads): nothing is written, the seeds included
    (a found_inf on the GPU is read on the host when a param is seeded)."""
    state = case(mode, sizes=[7, 300])
    gpu = to_dev(state)
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    for first in (True, False):
        run(gpu, [t.to(DEV) for t in grads_for(state, 0)], mode, FLAGS["momentum"], first,
            grad_scale=torch.tensor(2.0, device=DEV),
            found_inf=torch.tensor(1.0, device=inf_device))
        torch.cuda.synchronize()
        for key in gpu:
            for a, b in zip(gpu[key], before[key]):
                assert torch.equal(a, b), key


@pytest.mark.parametrize("mode", MODES)
def test_validate_only_writes_nothing(mode):
    state = case(mode, sizes=[7, 300])
    gpu = to_dev(state)
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    run(gpu, [t.to(DEV) for t in grads_for(state, 0)], mode, FLAGS["momentum"], True,
        validate_only=True)
    torch.cuda.synchronize()
    for key in gpu:
        for a, b in zip(gpu[key], before[key]):
            assert torch.equal(a, b), key


def test_sparse_grad_rejected_before_writing():
    """The modes take dense grads (the shared checks), on CUDA as on the CPU."""
    state = to_dev(case("bfloat16", sizes=[6]))
    p = state["params"][0].view(3, 2)
    g = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 2), (3, 2)).to(DEV)
    before = {k: [t.clone() for t in v] for k, v in state.items()}
    with pytest.raises(ValueError, match="sparse"):
        op_calls.sgd_([p], [g], [state["bufs"][0].view(3, 2)], is_first_step=True,
                      sr_seeds=state["sr_seeds"], states="bfloat16", **FLAGS["momentum"])
    for key in state:
        for a, b in zip(state[key], before[key]):
            assert torch.equal(a, b), key


# ---- the optimizer class ---------------------------------------------------------------------

def _model(dtype, device):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype).to(device))
            for n in (37, 256, 300_001, 5)]


def _set_grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.1).to(p.dtype).to(p.device)


CLASS_CASES = {
    "master-bf16": (torch.bfloat16, dict(master_weights=True)),
    "master-fp16": (torch.float16, dict(master_weights=True, nesterov=True)),
    "sr": (torch.bfloat16, dict(stochastic_rounding=True)),
    "bfloat16": (torch.float32, dict(state_dtype=torch.bfloat16)),
    "8bit": (torch.float32, dict(state_dtype="8bit", dampening=0.1)),
    "kahan-bf16": (torch.bfloat16, dict(kahan_summation=True)),
    "kahan-fp16": (torch.float16, dict(kahan_summation=True, nesterov=True)),
}


def _compare_optimizers(runs):
    (p_cpu, opt_cpu), (p_gpu, opt_gpu) = runs["cpu"], runs[DEV]
    for i, (a, e) in enumerate(zip(p_gpu, p_cpu)):
        assert_bitwise(a, e, f"param {i}")
        st_gpu, st_cpu = opt_gpu.state[a], opt_cpu.state[e]
        assert st_gpu.keys() == st_cpu.keys()
        for key in st_cpu:
            if key == "sr_seed":
                assert st_gpu[key].device.type == "cpu"
                assert torch.equal(st_gpu[key], st_cpu[key])
            else:
                assert st_gpu[key].device.type == DEV, key
                assert_bitwise(st_gpu[key], st_cpu[key], f"param {i} {key}")


@pytest.mark.parametrize("name", list(CLASS_CASES))
def test_optimizer_matches_cpu(name):
    dtype, kw = CLASS_CASES[name]
    runs = {}
    for device in ("cpu", DEV):
        params = _model(dtype, device)
        torch.manual_seed(3)  # the same seeds (drawn on the CPU at the first step)
        opt = pyoptim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.05, **kw)
        for k in range(3):
            _set_grads(params, k)
            opt.step()
        runs[device] = (params, opt)
    _compare_optimizers(runs)


def test_optimizer_plain_and_8bit_groups_with_grad_scaler_state():
    """A plain float32 group and an 8-bit group in one call, with grad_scale / found_inf on the
    params' device (as GradScaler passes them): the seeded group makes the op read found_inf on
    the host; both groups match the CPU, and a step with found_inf set changes nothing."""
    runs = {}
    for device in ("cpu", DEV):
        params = _model(torch.float32, device)
        torch.manual_seed(3)
        opt = pyoptim.SGD([{"params": params[:2]},
                           {"params": params[2:], "state_dtype": "8bit"}],
                          lr=1e-2, momentum=0.9, nesterov=True)
        for k in range(3):
            _set_grads(params, k)
            for p in params:
                p.grad.mul_(8.0)
            # what GradScaler.step sets before calling step() (_step_supports_amp_scaling)
            opt.grad_scale = torch.tensor(8.0, device=device)
            opt.found_inf = torch.tensor(1.0 if k == 1 else 0.0, device=device)
            opt.step()
        runs[device] = (params, opt)
    _compare_optimizers(runs)


def test_optimizer_kahan_groups_with_and_without_momentum():
    """Kahan with momentum, Kahan without (whose compensation is its only state) and a plain
    bfloat16 group in one call, with GradScaler's state on the params' device (a skipped step
    creates no state): the CPU's bits."""
    runs = {}
    for device in ("cpu", DEV):
        params = _model(torch.bfloat16, device)
        opt = pyoptim.SGD([{"params": params[:2], "kahan_summation": True},
                           {"params": params[2:3], "kahan_summation": True, "momentum": 0.0},
                           {"params": params[3:]}], lr=1e-2, momentum=0.9, weight_decay=0.01)
        for k in range(4):
            _set_grads(params, k)
            for p in params:
                p.grad.mul_(4.0)
            opt.grad_scale = torch.tensor(4.0, device=device)
            opt.found_inf = torch.tensor(1.0 if k == 0 else 0.0, device=device)
            opt.step()
            if k == 0:
                assert all(not opt.state[p] for p in params)
        runs[device] = (params, opt)
    _compare_optimizers(runs)
    assert set(runs[DEV][1].state[runs[DEV][0][2]]) == {"kahan_comp"}


@pytest.mark.parametrize("name", list(CLASS_CASES))
def test_checkpoint_moves_between_devices(name):
    """A CUDA run's state_dict loaded into an optimizer on the CPU, and a CPU run's into one on
    CUDA, continue bit for bit as a run that stayed on the CPU (the seed stays on the CPU; the
    masters, buffers, codes and scales follow the params)."""
    dtype, kw = CLASS_CASES[name]

    def make(device):
        params = _model(dtype, device)
        torch.manual_seed(3)
        return params, pyoptim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.05, **kw)

    ref_p, ref = make("cpu")
    for k in range(3):
        _set_grads(ref_p, k)
        ref.step()
    for first, second in ((DEV, "cpu"), ("cpu", DEV)):
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
                assert got.device.type == ("cpu" if key == "sr_seed" else second), key
                assert torch.equal(_bits(got), _bits(value)), f"{first} -> {second}: {key}"
