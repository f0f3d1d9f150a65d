"""CUDA sgd_, sgd_sparse_ and sparse_adam_ against the CPU kernels, bitwise (same math headers,
explicit fma on both sides, no implicit contraction; duplicate rows summed in the same blocked
position order on both, see Note [Sparse rows on the GPU] in csrc/cuda/sparse_rows.cuh), plus
GradScaler inputs on the device, a CUDA graph, index errors and class-level checks against
torch.optim.

Self-contained (like tests/test_cuda.py): the CPU kernel is the reference, itself checked against
torch.optim elsewhere. Every test but the first needs a GPU and skips with a reason without one.
"""

from __future__ import annotations

import itertools

import op_calls
import pytest
import torch
from tolerances import CUDA_SGD_VS_TORCH, CUDA_SPARSE_ADAM_VS_TORCH, CUDA_SPARSE_SGD_VS_TORCH

import pyoptim

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (none visible)")
ops = op_calls

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}
SIZES = [1, 3, 4, 7, 8, 33, 1000, 65536, 65536 * 3 + 17]


def bits(t):
    return t.detach().cpu().contiguous().view(INT_VIEW[t.dtype])


def assert_bitwise(actual, expected, what=""):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = bits(actual), bits(expected)
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {bad.shape[0]} of {a.numel()} elements differ; first at {i}: "
            f"{actual.detach().cpu()[i].item()!r} vs {expected.detach().cpu()[i].item()!r}"
        )


def layout(t, kind):
    if kind == "offset":  # storage offset of one element: no 16-byte alignment (scalar path)
        base = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
        base[1:] = t.reshape(-1)
        return base[1:].view(t.shape)
    if kind == "strided":  # every other element: the copy path
        base = torch.zeros(2 * t.numel(), dtype=t.dtype, device=t.device)
        base[::2] = t.reshape(-1)
        return base[::2]
    return t


# ---- dense sgd_ ------------------------------------------------------------------------------

SGD_FLAGS = [
    dict(momentum=mo, dampening=da, nesterov=ne, weight_decay=wd, maximize=mx)
    for mo, da, ne, wd, mx in itertools.product(
        [0.0, 0.9], [0.0, 0.25], [False, True], [0.0, 0.01], [False, True])
    if not (ne and (mo == 0.0 or da != 0.0)) and not (mo == 0.0 and da != 0.0)
]


def sgd_id(f):
    return (f"mo{f['momentum']}-da{f['dampening']}-{'nes' if f['nesterov'] else 'std'}"
            f"-wd{f['weight_decay']}-{'max' if f['maximize'] else 'min'}")


def dense_problem(sizes, dtypes, seed):
    g = torch.Generator().manual_seed(seed)
    p = [torch.randn(n, generator=g, dtype=torch.float64).to(d) for n, d in zip(sizes, dtypes)]
    gr = [(torch.randn(n, generator=g, dtype=torch.float64) * 0.1).to(d)
          for n, d in zip(sizes, dtypes)]
    return p, gr


def run_dense(sizes, dtypes, flags, kind="contiguous", n_steps=3, grad_scale=None,
              lr_tensor=None, seed=0):
    p0, g0 = dense_problem(sizes, dtypes, seed)
    out = {}
    for dev in ("cpu", "cuda"):
        p = [layout(t.to(dev, copy=True), kind) for t in p0]
        g = [layout(t.to(dev, copy=True), kind) for t in g0]
        b = [layout(torch.zeros_like(t, device=dev), kind) for t in p0] if flags["momentum"] else []
        for s in range(n_steps):
            scale = None if grad_scale is None else torch.tensor(grad_scale, device=dev)
            ops.sgd_(p, g, b, lr=0.1, is_first_step=(s == 0), **flags, grad_scale=scale,
                     lr_tensor=None if lr_tensor is None else torch.tensor(lr_tensor, device=dev))
        out[dev] = (p, b)
    torch.cuda.synchronize()
    (pc, bc), (pg, bg) = out["cpu"], out["cuda"]
    assert any(not torch.equal(a.cpu(), e) for a, e in zip(pg, p0))  # the step did something
    for i in range(len(sizes)):
        assert_bitwise(pg[i], pc[i], f"param[{i}]")
        if flags["momentum"]:
            assert_bitwise(bg[i], bc[i], f"buf[{i}]")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", SGD_FLAGS, ids=sgd_id)
def test_sgd_small_matches_cpu_bitwise(dtype, flags):
    run_dense(SIZES[:7], [dtype] * 7, flags)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "offset", "strided"])
def test_sgd_sizes_and_layouts_match_cpu_bitwise(dtype, kind):
    flags = dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.01, maximize=False)
    run_dense(SIZES, [dtype] * len(SIZES), flags, kind=kind)


@needs_gpu
def test_sgd_mixed_dtypes_many_tensors_scale_and_lr_tensor_match_cpu_bitwise():
    sizes = [1 + (7 * i) % 300 for i in range(900)]
    dtypes = [DTYPES[i % 4] for i in range(900)]
    flags = dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.1, maximize=True)
    run_dense(sizes, dtypes, flags, grad_scale=1024.0, lr_tensor=0.05)


@needs_gpu
def test_sgd_found_inf_on_device_skips_without_writing():
    p = torch.randn(1000, device="cuda")
    g = torch.randn(1000, device="cuda")
    b = torch.randn(1000, device="cuda")
    p0, b0 = p.clone(), b.clone()
    ops.sgd_([p], [g], [b], lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False, is_first_step=False,
             found_inf=torch.ones((), device="cuda"))
    assert torch.equal(p, p0) and torch.equal(b, b0)
    ops.sgd_([p], [g], [b], lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False, is_first_step=False,
             found_inf=torch.zeros((), device="cuda"))
    assert not torch.equal(p, p0) and not torch.equal(b, b0)


@needs_gpu
def test_sgd_in_cuda_graph_matches_eager():
    """Device lr / grad_scale / found_inf: no host sync, so the step can be captured."""
    torch.manual_seed(0)
    p = torch.randn(5000, device="cuda")
    g = torch.randn(5000, device="cuda")
    b = torch.randn(5000, device="cuda")
    pe, be, p0 = p.clone(), b.clone(), p.clone()
    lr, scale, inf = (torch.tensor(0.1, device="cuda"), torch.tensor(8.0, device="cuda"),
                      torch.zeros((), device="cuda"))
    kw = dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True, maximize=False,
              is_first_step=False, lr_tensor=lr, grad_scale=scale, found_inf=inf)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ops.sgd_([p], [g], [b], lr=0.0, **kw)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        graph.replay()
        ops.sgd_([pe], [g], [be], lr=0.0, **kw)
    torch.cuda.synchronize()
    assert not torch.equal(p, p0)  # the replays stepped
    assert_bitwise(p, pe, "param")
    assert_bitwise(b, be, "buf")


@needs_gpu
def test_sgd_class_matches_torch_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32).cuda()
    ref = torch.nn.Linear(64, 32).cuda()
    ref.load_state_dict(model.state_dict())
    opt = pyoptim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=1e-2, foreach=False)
    w0 = model.weight.detach().clone()
    x = torch.randn(16, 64, device="cuda")
    for _ in range(3):
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert not torch.equal(model.weight, w0)
    # float32 params: torch's single-tensor expressions with fma, as on the CPU
    torch.testing.assert_close(model.weight, ref.weight, **CUDA_SGD_VS_TORCH)
    torch.testing.assert_close(model.bias, ref.bias, **CUDA_SGD_VS_TORCH)


# ---- sparse -----------------------------------------------------------------------------------


def sparse_grad(shape, sparse_dim, nnz, dtype, seed, device):
    """Uncoalesced COO with duplicates in random order (made on the CPU, then moved)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, shape[d], (nnz,), generator=g)
                       for d in range(sparse_dim)])
    vals = torch.randn((nnz,) + tuple(shape[sparse_dim:]), generator=g, dtype=torch.float64)
    t = torch.sparse_coo_tensor(idx, vals.to(dtype), shape, is_coalesced=False)
    return t.to(device)


SPARSE_SGD_FLAGS = [
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=True),
    dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.01, maximize=False),
    dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.01, maximize=True),
    dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.01, maximize=False),
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("flags", SPARSE_SGD_FLAGS, ids=sgd_id)
# (4, 300) with 2000 lookups: ~500 duplicates per row, summed in blocks (partials on the GPU)
@pytest.mark.parametrize("shape,sparse_dim,nnz", [((50, 7), 1, 200), ((3000, 64), 1, 5000),
                                                  ((6, 5, 33), 2, 80), ((4, 300), 1, 2000)])
def test_sgd_sparse_matches_cpu_bitwise(dtype, flags, shape, sparse_dim, nnz):
    p0 = torch.randn(shape, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64).to(dtype)
    out = {}
    for dev in ("cpu", "cuda"):
        p = p0.to(dev, copy=True)
        b = torch.zeros_like(p) if flags["momentum"] else None
        for s in range(3):
            grad = sparse_grad(shape, sparse_dim, nnz, dtype, seed=10 + s, device=dev)
            ops.sgd_sparse_(p, grad, b, lr=0.05, is_first_step=(s == 0), **flags,
                            grad_scale=torch.tensor(4.0, device=dev) if s == 2 else None)
        out[dev] = (p, b)
    torch.cuda.synchronize()
    (pc, bc), (pg, bg) = out["cpu"], out["cuda"]
    assert not torch.equal(pg.cpu(), p0)
    assert_bitwise(pg, pc, "param")
    if flags["momentum"]:
        assert_bitwise(bg, bc, "buf")


# Plain sparse SGD (no momentum, no weight decay) takes one of three paths by the layouts of the
# param and of the grad's values (cpu::PlainSparse, ops::aten_plain_sparse; Note [Sparse SGD] in
# csrc/ops/sgd_cpu.cpp): entries applied in turn with a fused multiply-add, the same with the
# product rounded first (a flagged-coalesced grad without dense dims), or duplicates summed first.
# The CUDA op once always took the first, so these differed from the CPU in the last bits.
PLAIN_SPARSE_KINDS = ["coalesced_1d", "single_entry", "transposed_param", "transposed_values",
                      "strided_1d_values", "no_sparse_dim", "uncoalesced"]


def plain_sparse_case(kind, dtype, seed, device):
    """(param, grad) of one case on `device`; the same values on every device."""
    gen = torch.Generator().manual_seed(seed)
    shape = (40,) if kind == "coalesced_1d" else (6, 33)
    p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    if kind == "transposed_param":
        p = torch.empty(shape[::-1], dtype=dtype, device=device).t().copy_(p)
    nnz = 12
    rows = torch.randint(0, 3, (nnz,), generator=gen)  # duplicates
    if kind == "coalesced_1d":  # unique sorted rows, flagged coalesced: ATen's non-hybrid path
        idx = torch.randperm(shape[0], generator=gen)[:nnz].sort().values[None]
        vals = torch.randn(nnz, generator=gen, dtype=torch.float64).to(dtype).to(device)
        return p, torch.sparse_coo_tensor(idx.to(device), vals, shape, is_coalesced=True)
    if kind in ("single_entry", "strided_1d_values"):  # every dim sparse: 1-D values
        n = 1 if kind == "single_entry" else nnz
        idx = torch.stack([rows[:n], torch.randint(0, shape[1], (n,), generator=gen)])
        vals = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(dtype).to(device)
        vals = vals[:, 0] if kind == "strided_1d_values" else vals[:, 0].contiguous()
        return p, torch.sparse_coo_tensor(idx.to(device), vals, shape)
    if kind == "no_sparse_dim":
        vals = torch.randn(3, *shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
        idx = torch.zeros(0, 3, dtype=torch.long, device=device)
        return p, torch.sparse_coo_tensor(idx, vals, shape)
    vals = torch.randn(shape[1], nnz, generator=gen, dtype=torch.float64).to(dtype).to(device)
    vals = vals.t() if kind == "transposed_values" else vals.t().contiguous()
    return p, torch.sparse_coo_tensor(rows[None].to(device), vals, shape)


def test_plain_sparse_cases_take_every_path():
    """The cases above reach each of the CPU's paths (no GPU needed)."""
    # the case's layouts, as the op sees them (is_contiguous of param and values, coalesced)
    seen = set()
    for kind in PLAIN_SPARSE_KINDS:
        p, g = plain_sparse_case(kind, torch.float32, 0, "cpu")
        seen.add((p.is_contiguous(), g._values().is_contiguous(),
                  g.is_coalesced() or g._nnz() == 1, g._values().dim()))
    assert (True, True, True, 1) in seen  # rounded product
    assert (True, True, False, 2) in seen  # in turn
    assert any(not (pc and vc) for pc, vc, _, _ in seen)  # summed first


@needs_gpu
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", PLAIN_SPARSE_KINDS)
def test_plain_sparse_sgd_layouts_match_cpu_bitwise(kind, dtype, maximize):
    out = {}
    for dev in ("cpu", "cuda"):
        p, _ = plain_sparse_case(kind, dtype, 0, dev)
        p0 = p.clone()
        for s in range(3):
            _, g = plain_sparse_case(kind, dtype, 10 + s, dev)
            ops.sgd_sparse_(p, g, None, lr=0.37, momentum=0.0, dampening=0.0, nesterov=False,
                            weight_decay=0.0, maximize=maximize, is_first_step=False)
        assert not torch.equal(p, p0)
        out[dev] = p
    torch.cuda.synchronize()
    assert_bitwise(out["cuda"], out["cpu"], f"param ({kind})")


@needs_gpu
def test_sgd_sparse_out_of_range_index_raises_before_writing():
    p = torch.randn(10, 4, device="cuda")
    b = torch.randn(10, 4, device="cuda")
    p0, b0 = p.clone(), b.clone()
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 10, 3]], device="cuda"),
                                   torch.ones(3, 4, device="cuda"), (10, 4),
                                   check_invariants=False)
    with pytest.raises(IndexError, match="out of range"):
        ops.sgd_sparse_(p, grad, b, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                        nesterov=False, maximize=False, is_first_step=False)
    assert torch.equal(p, p0) and torch.equal(b, b0)


def run_sparse_adam(dev, params0, grads_fn, n_steps, **kw):
    ps = [p.to(dev, copy=True) for p in params0]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    for s in range(1, n_steps + 1):
        ops.sparse_adam_(ps, grads_fn(s, dev), ms, vs, [s - 1] * len(ps), **kw)
    return ps, ms, vs


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("maximize,weight_decay", [(False, 0.0), (True, 0.0), (False, 0.01)])
def test_sparse_adam_matches_cpu_bitwise(dtype, maximize, weight_decay):
    # widths 3 / 7 / 33 / 64 (part of a warp pass), 128 (one pass of 32 lanes x 4 columns), 200
    # and 300 (a second, partial pass); (3, 128) with 3001 lookups: ~1000 duplicates per row,
    # summed in blocks of 256 (block sums on the GPU, then added per row)
    specs = [((50, 7), 1, 200), ((3000, 64), 1, 5000), ((6, 5, 33), 2, 80), ((20, 3), 1, 0),
             ((100, 128), 1, 2000), ((30, 200), 1, 500), ((40, 300), 1, 150),
             ((3, 128), 1, 3001)]
    gen = torch.Generator().manual_seed(3)
    params0 = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s, _, _ in specs]

    def grads_fn(step, dev):
        return [sparse_grad(s, sd, nnz, dtype, seed=100 * step + k, device=dev)
                for k, (s, sd, nnz) in enumerate(specs)]

    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay,
              maximize=maximize)
    cpu = run_sparse_adam("cpu", params0, grads_fn, 3, **kw)
    gpu = run_sparse_adam("cuda", params0, grads_fn, 3, **kw)
    torch.cuda.synchronize()
    assert not torch.equal(gpu[0][0].cpu(), params0[0])
    for name, a_list, e_list in zip(("param", "exp_avg", "exp_avg_sq"), gpu, cpu):
        for i, (a, e) in enumerate(zip(a_list, e_list)):
            assert_bitwise(a, e, f"{name}[{i}]")


@needs_gpu
def test_sparse_adam_lr_tensor_on_cuda_matches_cpu_bitwise():
    p0 = [torch.randn(100, 16, generator=torch.Generator().manual_seed(0))]

    def grads_fn(step, dev):
        return [sparse_grad((100, 16), 1, 300, torch.float32, seed=step, device=dev)]

    kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False, lr=0.0)
    cpu = run_sparse_adam("cpu", p0, grads_fn, 2, lr_tensor=torch.tensor(0.01), **kw)
    gpu = run_sparse_adam("cuda", p0, grads_fn, 2, lr_tensor=torch.tensor(0.01, device="cuda"),
                          **kw)
    assert not torch.equal(gpu[0][0].cpu(), p0[0])
    assert_bitwise(gpu[0][0], cpu[0][0], "param")


@needs_gpu
def test_sparse_adam_out_of_range_index_raises_before_writing():
    ps = [torch.randn(10, 4, device="cuda"), torch.randn(5, 4, device="cuda")]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    before = [p.clone() for p in ps]
    good = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.ones(2, 4), (10, 4)).cuda()
    bad = torch.sparse_coo_tensor(torch.tensor([[-1, 2]]).cuda(), torch.ones(2, 4).cuda(),
                                  (5, 4), check_invariants=False)
    with pytest.raises(IndexError, match="out of range"):
        ops.sparse_adam_(ps, [good, bad], ms, vs, [0, 0], lr=0.1, beta1=0.9, beta2=0.999,
                         eps=1e-8, weight_decay=0.0, maximize=False)
    for p, b in zip(ps, before):
        assert torch.equal(p, b)
    assert all(not m.any() for m in ms)


@needs_gpu
def test_sparse_adam_class_matches_torch_on_cuda():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(1000, 32, sparse=True).cuda()
    ref = torch.nn.Embedding(1000, 32, sparse=True).cuda()
    ref.load_state_dict(emb.state_dict())
    opt = pyoptim.SparseAdam(emb.parameters(), lr=1e-2)
    opt_ref = torch.optim.SparseAdam(ref.parameters(), lr=1e-2)
    w0 = emb.weight.detach().clone()
    for _ in range(3):
        idx = torch.randint(0, 1000, (4096,), device="cuda")  # many duplicates
        for m, o in ((emb, opt), (ref, opt_ref)):
            o.zero_grad()
            m(idx).square().sum().backward()
            o.step()
    assert not torch.equal(emb.weight, w0)
    # torch coalesces on the GPU with a sum order of its own: the param differs by rounding
    torch.testing.assert_close(emb.weight, ref.weight, **CUDA_SPARSE_ADAM_VS_TORCH)


@needs_gpu
def test_sgd_sparse_class_matches_torch_on_cuda():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(1000, 32, sparse=True).cuda()
    ref = torch.nn.Embedding(1000, 32, sparse=True).cuda()
    ref.load_state_dict(emb.state_dict())
    opt = pyoptim.SGD(emb.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    w0 = emb.weight.detach().clone()
    for _ in range(3):
        idx = torch.randint(0, 1000, (4096,), device="cuda")
        for m, o in ((emb, opt), (ref, opt_ref)):
            o.zero_grad()
            m(idx).square().sum().backward()
            o.step()
    assert not torch.equal(emb.weight, w0)
    torch.testing.assert_close(emb.weight, ref.weight, **CUDA_SPARSE_SGD_VS_TORCH)
