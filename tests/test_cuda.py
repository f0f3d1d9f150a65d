"""CUDA adam_: against the CPU kernel (bitwise: same math header, no FMA on either side), in a
CUDA graph, with GradScaler's grad_scale / found_inf, and class-level against torch's fused Adam.

Self-contained on purpose (no tests/reference.py): the CPU kernel is the reference, and it is
itself checked against torch.optim elsewhere. Every test but the first needs a GPU and skips
with a reason where there is none.
"""

from __future__ import annotations

import copy
import itertools
import os

import op_calls
import pytest
import torch
from tolerances import CUDA_ADAM_VS_TORCH_FUSED, CUDA_DEVICE_STEP_PARAM_ULPS

import pyoptim

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (none visible)")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}
# Element counts: below one 16-byte vector, odd, exact vectors, one chunk (65536) and across
# chunk boundaries with a tail.
SIZES = [1, 3, 4, 7, 8, 33, 1000, 65536, 65536 * 3 + 17]


def test_cuda_kernels_are_registered_exactly_when_built():
    """A build with the CUDA sources registers a CUDA (and, for sparse grads, SparseCUDA) kernel
    for every optimizer op, a CPU-only build none. CI builds with PYOPTIM_CUDA=1, which makes a
    build that cannot compile CUDA fail, and runs the tests with it set: then CUDA must be in."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    built = torch.ops.pyoptim._built_with_cuda.default()
    for op in ("adam_", "sgd_", "sparse_adam_"):
        assert has(f"pyoptim::{op}", "CPU")
        assert has(f"pyoptim::{op}", "CUDA") == built, op
    for op in ("sgd_", "sparse_adam_"):
        assert has(f"pyoptim::{op}", "SparseCUDA") == built, op
    if os.environ.get("PYOPTIM_CUDA") == "1":
        assert built, "PYOPTIM_CUDA=1 but this build has no CUDA kernels"


# ---- helpers ---------------------------------------------------------------------------------


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(INT_VIEW[t.dtype])


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = bits(actual), bits(expected)
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {bad.shape[0]} of {a.numel()} elements differ; first at {i}: "
            f"{actual.detach().cpu()[i].item()!r} vs {expected.detach().cpu()[i].item()!r}"
        )


class Problem:
    """Params, grads and state for one adam_ call, made on the CPU in float64 then cast."""

    def __init__(self, sizes, dtypes, seed, amsgrad, layout="contiguous"):
        g = torch.Generator().manual_seed(seed)
        self.amsgrad = amsgrad
        self.lists = {k: [] for k in ("p", "g", "m", "v", "vmax")}
        for n, dtype in zip(sizes, dtypes):
            p = torch.randn(n, generator=g, dtype=torch.float64)
            grad = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
            m = torch.randn(n, generator=g, dtype=torch.float64) * 0.01
            v = torch.rand(n, generator=g, dtype=torch.float64) * 1e-3
            vmax = v + torch.rand(n, generator=g, dtype=torch.float64) * 1e-3
            for key, t in zip(("p", "g", "m", "v", "vmax"), (p, grad, m, v, vmax)):
                self.lists[key].append(t.to(dtype))
        self.layout = layout

    def on(self, device):
        """Copies on `device`, in the layout under test."""
        out = {}
        for key, ts in self.lists.items():
            out[key] = [self._layout(t.to(device, copy=True), i) for i, t in enumerate(ts)]
        return out

    def _layout(self, t, i):
        if self.layout == "offset":  # storage offset of one element: no 16-byte alignment
            base = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
            base[1:] = t
            return base[1:]
        if self.layout == "strided":  # every other element of a bigger buffer: copy path
            base = torch.zeros(2 * t.numel(), dtype=t.dtype, device=t.device)
            base[::2] = t
            return base[::2]
        return t


def run_adam(ts, steps, amsgrad, **kw):
    op_calls.adam_(
        ts["p"],
        ts["g"],
        ts["m"],
        ts["v"],
        ts["vmax"] if amsgrad else [],
        steps,
        amsgrad=amsgrad,
        **kw,
    )


HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


def compare_to_cpu(prob, flags, n_steps=3, step_device="cpu", step_dtype=torch.float32,
                   grad_scale=None, lr_tensor=None, param_ulps=0):
    amsgrad = flags["amsgrad"]
    cpu, gpu = prob.on("cpu"), prob.on("cuda")
    n = len(cpu["p"])
    steps_cpu = [torch.tensor(float(i % 3), dtype=step_dtype) for i in range(n)]
    steps_gpu = [s.clone().to(step_device) for s in steps_cpu]
    kw = dict(HYPER, **flags)
    for _ in range(n_steps):
        run_adam(
            cpu, steps_cpu, **kw,
            grad_scale=None if grad_scale is None else torch.tensor(grad_scale),
            lr_tensor=None if lr_tensor is None else torch.tensor(lr_tensor, dtype=torch.float64),
        )
        run_adam(
            gpu, steps_gpu, **kw,
            grad_scale=None if grad_scale is None else torch.tensor(grad_scale, device="cuda"),
            lr_tensor=None if lr_tensor is None else torch.tensor(lr_tensor, device="cuda",
                                                                  dtype=torch.float64),
        )
    torch.cuda.synchronize()
    for key in ("p", "m", "v") + (("vmax",) if amsgrad else ()):
        if key != "vmax":  # the step changed something (vmax may legitimately stay)
            assert any(not torch.equal(a.cpu(), b) for a, b in zip(gpu[key], prob.lists[key]))
        for i, (a, e) in enumerate(zip(gpu[key], cpu[key])):
            if key == "p" and param_ulps:
                diff = (bits(a).to(torch.int64) - bits(e).to(torch.int64)).abs().max().item()
                assert diff <= param_ulps, f"{key}[{i}]: {diff} ulps"
            else:
                assert_bitwise(a, e, f"{key}[{i}]")
    for a, e in zip(steps_gpu, steps_cpu):
        assert a.item() == e.item()  # counted the same way
        assert a.device.type == torch.device(step_device).type


FLAG_SETS = [
    dict(decoupled=d, amsgrad=a, maximize=m, weight_decay=wd)
    for d, a, m, wd in itertools.product([False, True], [False, True], [False, True], [0.0, 0.1])
]


def flag_id(f):
    return "-".join(
        [("adamw" if f["decoupled"] else "adam"), ("ams" if f["amsgrad"] else "noams"),
         ("max" if f["maximize"] else "min"), f"wd{f['weight_decay']}"]
    )


# ---- CUDA vs CPU kernel, host-side step counts (torch's default placement) --------------------


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", FLAG_SETS, ids=flag_id)
def test_small_matches_cpu_bitwise(dtype, flags):
    prob = Problem(SIZES[:7], [dtype] * 7, seed=1, amsgrad=flags["amsgrad"])
    compare_to_cpu(prob, flags)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided"])
def test_sizes_and_layouts_match_cpu_bitwise(dtype, layout):
    flags = dict(decoupled=True, amsgrad=True, maximize=False, weight_decay=0.01)
    prob = Problem(SIZES, [dtype] * len(SIZES), seed=2, amsgrad=True, layout=layout)
    compare_to_cpu(prob, flags)


@needs_gpu
def test_mixed_dtypes_and_many_tensors_match_cpu_bitwise():
    """One call, four dtypes (one launch group each), more tensors than one launch holds."""
    sizes = [1 + (7 * i) % 300 for i in range(900)]
    dtypes = [DTYPES[i % 4] for i in range(900)]
    prob = Problem(sizes, dtypes, seed=3, amsgrad=False)
    compare_to_cpu(prob, dict(decoupled=False, amsgrad=False, maximize=True, weight_decay=0.1))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_scale_matches_cpu_bitwise(dtype):
    prob = Problem(SIZES[:8], [dtype] * 8, seed=4, amsgrad=False)
    flags = dict(decoupled=False, amsgrad=False, maximize=False, weight_decay=0.0)
    compare_to_cpu(prob, flags, grad_scale=1024.0)


# ---- step counts on the device (capturable / fused) -------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64], ids=str)
def test_device_steps_match_cpu(dtype, step_dtype):
    """Coefficients computed on the GPU from device step counts, lr and grad_scale.

    The moments bitwise; the param within CUDA_DEVICE_STEP_PARAM_ULPS (tests/tolerances.py):
    CUDA's double pow is documented to 2 ulps, so 1 - beta**step, and from it the step size,
    may differ from the host's in the last bits (absorbed by the narrowing to float for float32
    / bfloat16 / float16 params).
    """
    flags = dict(decoupled=True, amsgrad=True, maximize=False, weight_decay=0.01)
    prob = Problem(SIZES[:8], [dtype] * 8, seed=5, amsgrad=True)
    compare_to_cpu(prob, flags, n_steps=4, step_device="cuda", step_dtype=step_dtype,
                   grad_scale=8.0, lr_tensor=3e-3,
                   param_ulps=CUDA_DEVICE_STEP_PARAM_ULPS[dtype])


@needs_gpu
def test_float32_device_step_stays_at_2_pow_24():
    """A float32 count stays at 2**24 (torch's `step_t += 1`, the host's next_step_count), so a
    device-mode step from 2**24 takes the coefficients of one from 2**24 - 1: both count 2**24.
    (The kernel once computed them from 2**24 + 1: a different step size, visible in float64.)"""
    out = []
    for start in (2.0**24 - 1, 2.0**24):
        gen = torch.Generator().manual_seed(0)
        p, g, m, v = (torch.rand(1000, generator=gen, dtype=torch.float64).cuda()
                      for _ in range(4))
        step = torch.tensor(start, dtype=torch.float32, device="cuda")
        op_calls.adam_([p], [g], [m], [v], [], [step], lr=1e-2, beta1=1 - 2.0**-24, beta2=0.999,
                       weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                       decoupled=True)
        assert step.item() == 2.0**24
        out.append(p)
    assert_bitwise(out[1], out[0], "param")


@needs_gpu
@pytest.mark.parametrize("step_device", ["cpu", "cuda"])
def test_found_inf_skips_everything(step_device):
    prob = Problem([5, 70000], [torch.float32] * 2, seed=6, amsgrad=True)
    gpu = prob.on("cuda")
    before = {k: [t.clone() for t in v] for k, v in gpu.items()}
    steps = [torch.tensor(3.0).to(step_device) for _ in range(2)]
    flags = dict(decoupled=False, amsgrad=True, maximize=False, weight_decay=0.1)
    run_adam(gpu, steps, **HYPER, **flags, grad_scale=torch.tensor(2.0, device="cuda"),
             found_inf=torch.tensor(1.0, device="cuda"))
    torch.cuda.synchronize()
    for k in gpu:
        for a, b in zip(gpu[k], before[k]):
            assert_bitwise(a, b, k)
    assert [s.item() for s in steps] == [3.0, 3.0]
    # found_inf == 0: the step happens and is counted
    run_adam(gpu, steps, **HYPER, **flags, grad_scale=torch.tensor(2.0, device="cuda"),
             found_inf=torch.tensor(0.0, device="cuda"))
    assert [s.item() for s in steps] == [4.0, 4.0]
    assert not torch.equal(gpu["p"][1], before["p"][1])


@needs_gpu
def test_capturable_step_in_cuda_graph():
    """pyoptim.Adam(capturable=True, lr=Tensor): the whole step in a CUDA graph, replayed, gives
    the same bits as the same optimizer run eagerly; the step counts advance on the device."""
    torch.manual_seed(0)
    shapes = [(33, 17), (1000,), (3,), (256, 256)]

    def make():
        params = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
        lr = torch.tensor(1e-2, device="cuda")
        opt = pyoptim.AdamW(params, lr=lr, capturable=True, amsgrad=True, weight_decay=0.1)
        return params, opt

    grads = [[torch.randn(s, device="cuda") for s in shapes] for _ in range(5)]
    p_eager, opt_eager = make()
    p_graph, opt_graph = make()
    with torch.no_grad():
        for a, b in zip(p_graph, p_eager):
            a.copy_(b)
    for p, g in zip(p_graph, grads[0]):
        p.grad = g.clone()
    # warm up on a side stream (lazy state is created here), as torch's docs do
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt_graph.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_graph.step()
    for p, g in zip(p_eager, grads[0]):
        p.grad = g.clone()
    opt_eager.step()
    for k in range(1, 5):
        for p, g in zip(p_graph, grads[k]):
            p.grad.copy_(g)
        graph.replay()
        for p, g in zip(p_eager, grads[k]):
            p.grad = g.clone()
        opt_eager.step()
    torch.cuda.synchronize()
    for a, b in zip(p_graph, p_eager):
        assert_bitwise(a, b, "param")
    for p in p_graph:
        st = opt_graph.state[p]["step"]
        assert st.device.type == "cuda" and st.item() == 5.0


@needs_gpu
def test_errors_leave_everything_unchanged():
    prob = Problem([10, 10], [torch.float32] * 2, seed=7, amsgrad=False)
    gpu = prob.on("cuda")
    before = [t.clone() for t in gpu["p"]]
    steps = [torch.tensor(0.0, device="cuda"), torch.tensor(0.0, device="cuda", dtype=torch.half)]
    with pytest.raises(TypeError, match="float32 or float64"):
        run_adam(gpu, steps, **HYPER, decoupled=False, amsgrad=False, maximize=False,
                 weight_decay=0.0)
    gpu["g"][1] = gpu["g"][1].cpu()
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    with pytest.raises(RuntimeError, match="same device"):
        run_adam(gpu, steps, **HYPER, decoupled=False, amsgrad=False, maximize=False,
                 weight_decay=0.0)
    gpu["g"][1] = gpu["g"][1].cuda()
    gpu["m"][1] = gpu["p"][0]  # aliasing: rejected before anything is written
    with pytest.raises(ValueError, match="overlap"):
        run_adam(gpu, steps, **HYPER, decoupled=False, amsgrad=False, maximize=False,
                 weight_decay=0.0)
    for a, b in zip(gpu["p"], before):
        assert_bitwise(a, b, "param")
    assert [s.item() for s in steps] == [0.0, 0.0]


# ---- class level: pyoptim vs torch's fused CUDA Adam ------------------------------------------


@needs_gpu
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_class_matches_torch_fused(cls, amsgrad):
    """torch's fused kernel lets nvcc contract a*b+c into FMAs and computes the step size its own
    way, so it is not bitwise: within CUDA_ADAM_VS_TORCH_FUSED (tests/tolerances.py)."""
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (7, 3), (1,), (4096,)]
    ref = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    mine = [p.detach().clone().requires_grad_() for p in ref]
    kw = dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05, amsgrad=amsgrad, fused=True)
    opt_ref = getattr(torch.optim, cls)(ref, **kw)
    opt_mine = getattr(pyoptim, cls)(mine, **kw)
    start = [p.detach().clone() for p in mine]
    for _ in range(10):
        grads = [torch.randn(s, device="cuda") for s in shapes]
        for p, q, g in zip(ref, mine, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_mine.step()
    for p, q, s in zip(ref, mine, start):
        assert not torch.equal(q, s)
        torch.testing.assert_close(q, p, **CUDA_ADAM_VS_TORCH_FUSED["param"])
    for p, q in zip(ref, mine):
        st_ref, st_mine = opt_ref.state[p], opt_mine.state[q]
        assert st_mine["step"].device == st_ref["step"].device
        assert st_mine["step"].dtype == st_ref["step"].dtype
        assert st_mine["step"].item() == st_ref["step"].item() == 10.0
        torch.testing.assert_close(st_mine["exp_avg"], st_ref["exp_avg"],
                                   **CUDA_ADAM_VS_TORCH_FUSED["exp_avg"])
    # torch's fused state loads into pyoptim and steps on (a deep copy: state_dict() returns the
    # live step tensors, which load_state_dict would otherwise share between the two optimizers)
    opt_mine.load_state_dict(copy.deepcopy(opt_ref.state_dict()))
    for p, q in zip(ref, mine):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt_ref.step()
    opt_mine.step()
    assert opt_mine.state[mine[0]]["step"].item() == 11.0


@needs_gpu
def test_class_grad_scaler():
    """GradScaler hands grad_scale / found_inf to the fused step (no unscale_ pass)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).cuda()
    opt = pyoptim.Adam(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    w0 = model.weight.detach().clone()
    loss = model(torch.randn(8, 16, device="cuda")).square().sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(model.weight, w0)
    assert opt.state[model.weight]["step"].item() == 1.0
    # an inf gradient: the step is skipped, counts included
    w1 = model.weight.detach().clone()
    opt.zero_grad()
    loss = model(torch.full((8, 16), float("inf"), device="cuda")).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model.weight, w1)
    assert opt.state[model.weight]["step"].item() == 1.0
