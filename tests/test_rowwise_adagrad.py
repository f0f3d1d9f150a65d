"""pyoptim.RowWiseAdagrad: the rowwise_adagrad_ op vs a plain-PyTorch reference of FBGEMM's
row-wise Adagrad (tests/reference_adagrad_rows.py), ISA / thread-count agreement, FBGEMM's own
CPU TBE (when fbgemm_gpu imports), the class (state, state_dict, groups, schedulers, errors) and
bad input (clear error, nothing changed).
"""

from __future__ import annotations

import copy

import op_calls  # noqa: F401  (registers the ops)
import pytest
import torch
from helpers import any_changed, assert_bitwise_equal, names_matching, snapshot
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pyoptim
from pyoptim import _ops
from tests.reference_adagrad_rows import rowwise_adagrad_reference
from tests.test_sparse_adam import WIDTHS, dname, draw_indices, make_grad
from tests.tolerances import ROWWISE_ADAGRAD_EXACT, ROWWISE_ADAGRAD_VS_FBGEMM

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LEVELS = _ops.available_cpu_capabilities()
MODES = {"none": (0.0, False), "l2": (0.1, False), "decoupled": (0.1, True)}
ops = torch.ops.pyoptim


def rowwise_adagrad_(params, grads, sums, steps, *, lr, lr_decay=0.0, weight_decay=0.0,
                     eps=1e-10, maximize=False, decoupled=False, lr_tensor=None,
                     validate_only=False):
    ops.rowwise_adagrad_.default(params, grads, sums, steps, [len(params)],
                                 [lr, lr_decay, weight_decay, eps], [maximize, decoupled],
                                 [lr_tensor] if lr_tensor is not None else [], validate_only)


def sum_like(p: torch.Tensor, init: float = 0.0) -> torch.Tensor:
    rows = p.shape[0] if p.dim() else 1
    return torch.full((rows,), init, dtype=torch.float64 if p.dtype == torch.float64
                      else torch.float32)


hyper = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 0.1, 0.5]),
    "lr_decay": st.sampled_from([0.0, 0.1]),
    "eps": st.sampled_from([1e-10, 1e-3]),
    "maximize": st.booleans(),
    "mode": st.sampled_from(list(MODES)),
    "init": st.sampled_from([0.0, 0.1]),
})


# ---- op vs reference (property-based) -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@given(
    width=st.sampled_from(WIDTHS + [63, 65, 96, 97]),
    n_rows=st.sampled_from([1, 2, 5, 64, 300]),
    nnz=st.sampled_from([0, 1, 2, 17, 100, 600]),
    kind=st.sampled_from(["dense", "uniform", "repeated", "single", "zipf"]),
    steps=st.integers(1, 3),
    hp=hyper,
    seed=st.integers(0, 2**16),
)
def test_matches_reference(isa, dtype, width, n_rows, nnz, kind, steps, hp, seed):
    """Dense grads (every row) and sparse ones with up to 600 duplicates per row; widths around
    the vector widths and the 32 lanes of the row sum."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "dense":
        grads = [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                 for _ in range(steps)]
    else:
        grads = [make_grad(draw_indices(kind, nnz, n_rows, gen), shape, dtype, gen)
                 for _ in range(steps)]
    wd, decoupled = MODES[hp["mode"]]
    kw = dict(lr=hp["lr"], lr_decay=hp["lr_decay"], eps=hp["eps"], maximize=hp["maximize"],
              weight_decay=wd, decoupled=decoupled)
    p1, p2 = param.clone(), param.clone()
    s1, s2 = sum_like(param, hp["init"]), sum_like(param, hp["init"])
    n1 = torch.tensor(0.0)
    for step, g in enumerate(grads, start=1):
        rowwise_adagrad_([p1], [g], [s1], [n1], **kw)
        rowwise_adagrad_reference(p2, g, s2, step, **kw)
    assert n1.item() == steps
    assert_bitwise_equal(p1, p2, f"param {isa}")
    assert_bitwise_equal(s1, s2, f"sum {isa}")
    assert ROWWISE_ADAGRAD_EXACT == dict(atol=0.0, rtol=0.0)
    if kind == "dense" or nnz > 0:
        assert not torch.equal(s1, sum_like(param, hp["init"])), "the sum did not move"
        if dtype in (torch.float32, torch.float64) or hp["lr"] >= 0.1:
            assert not torch.equal(p1, param), "the step changed nothing"
    else:
        assert torch.equal(p1, param)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape", [(40,), (), (6, 5, 7), (0, 4), (5, 0)], ids=str)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_shapes(dtype, shape, sparse):
    """Rows are dim 0 (1-D: one element per row; 0-dim: one row); rows of trailing dims are
    flattened; empty params and zero-width rows change nothing but the step count."""
    if sparse and len(shape) == 0:
        pytest.skip("a 0-dim param has no sparse grad over rows")
    gen = torch.Generator().manual_seed(1)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if sparse:
        idx = torch.randint(0, max(shape[0], 1), (9 if shape[0] else 0,), generator=gen)
        vals = torch.randn((idx.numel(), *shape[1:]), generator=gen).to(dtype)
        g = torch.sparse_coo_tensor(idx.view(1, -1), vals, shape)
    else:
        g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    p1, p2 = param.clone(), param.clone()
    s1, s2 = sum_like(param), sum_like(param)
    n = torch.tensor(0.0)
    for step in (1, 2):
        rowwise_adagrad_([p1], [g], [s1], [n], lr=0.1, weight_decay=0.1)
        rowwise_adagrad_reference(p2, g, s2, step, lr=0.1, eps=1e-10, weight_decay=0.1)
    assert n.item() == 2
    assert_bitwise_equal([p1, s1], [p2, s2], str(shape))
    if param.numel() > 0:
        assert not torch.equal(p1, param)


@pytest.mark.parametrize("layout", ["transposed", "row_slice", "col_slice"])
def test_strided_params(layout):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(64, 48, generator=gen)
    view = {"transposed": base.t(), "row_slice": base[::2], "col_slice": base[:, 5:37]}[layout]
    ref = view.clone()
    s, s_ref = sum_like(view), sum_like(view)
    before = base.clone()
    for step, sparse in ((1, True), (2, False)):
        g = (make_grad(torch.randint(0, view.shape[0], (50,), generator=gen), view.shape,
                       torch.float32, gen) if sparse else torch.randn(view.shape, generator=gen))
        rowwise_adagrad_([view], [g], [s], [torch.tensor(float(step - 1))], lr=0.1)
        rowwise_adagrad_reference(ref, g, s_ref, step, lr=0.1, eps=1e-10)
    assert_bitwise_equal([view.contiguous(), s], [ref, s_ref], layout)
    if layout == "col_slice":  # memory outside the view is untouched
        mask = torch.ones_like(base, dtype=torch.bool)
        mask[:, 5:37] = False
        assert torch.equal(base[mask], before[mask])


# ---- agreement: ISA levels, thread counts -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("width", [1, 13, 128, 4099])
@pytest.mark.parametrize("mode", list(MODES))
def test_bitwise_across_levels_and_threads(dtype, width, mode, restore_num_threads):
    gen = torch.Generator().manual_seed(3)
    n_rows = max(64, 100000 // width)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = [make_grad(draw_indices("zipf", 3000, n_rows, gen), shape, dtype, gen),
             torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)]
    wd, decoupled = MODES[mode]
    results = []
    for level in LEVELS:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            p, s, n = param.clone(), sum_like(param), torch.tensor(0.0)
            with _ops.cpu_capability_override(level):
                for g in grads:
                    rowwise_adagrad_([p], [g], [s], [n], lr=0.01, weight_decay=wd,
                                     decoupled=decoupled, maximize=True)
            results.append((level, threads, p, s))
    _, _, p0, s0 = results[0]
    assert not torch.equal(p0, param)
    for level, threads, p, s in results[1:]:
        assert torch.equal(p, p0) and torch.equal(s, s0), (level, threads)


# ---- FBGEMM's own row-wise Adagrad (optional) ---------------------------------------------------


def _fbgemm():
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
            WeightDecayMode,
        )
    except Exception as e:  # not installed, or built for another torch
        return None, f"fbgemm_gpu does not import: {type(e).__name__}: {e}"
    return (EmbOptimType, EmbeddingLocation, PoolingMode, ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen, WeightDecayMode), ""


_FBGEMM, _FBGEMM_WHY = _fbgemm()


@pytest.mark.skipif(_FBGEMM is None, reason=_FBGEMM_WHY)
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("width", [4, 40, 128])
def test_matches_fbgemm_cpu_tbe(width):
    """FBGEMM's CPU TBE (EXACT_ROWWISE_ADAGRAD, a float32 table, sum pooling) applies the update
    in its backward; pyoptim.RowWiseAdagrad steps the same table with the same gradient as a
    COO grad (one value row per lookup: the bag's output gradient). 5 steps of 64 bags of 3
    lookups over 200 rows; weights and sums agree within ROWWISE_ADAGRAD_VS_FBGEMM (only the
    order of the row sums differs: see tolerances.py). weight_decay 0 only: fbgemm_gpu 1.9.0's
    CPU TBE ignores weight_decay (with L2 or DECOUPLE and weight_decay=0.01 its result is the
    result without decay, measured), so the decay modes follow FBGEMM's CUDA template
    (codegen/genscript/optimizers.py, rowwise_adagrad) and are checked against the reference."""
    mode = "none"
    (EmbOptimType, EmbeddingLocation, PoolingMode, ComputeDevice, TBE,
     WeightDecayMode) = _FBGEMM
    rows, bags, per_bag, lr, eps, wd = 200, 64, 3, 0.1, 1e-8, 0.01
    fb_mode = {"none": WeightDecayMode.NONE, "l2": WeightDecayMode.L2,
               "decoupled": WeightDecayMode.DECOUPLE}[mode]
    tbe = TBE([(rows, width, EmbeddingLocation.HOST, ComputeDevice.CPU)],
              optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=lr, eps=eps,
              weight_decay=wd if mode != "none" else 0.0, weight_decay_mode=fb_mode,
              pooling_mode=PoolingMode.SUM)
    weight = tbe.split_embedding_weights()[0]
    torch.manual_seed(0)
    with torch.no_grad():
        weight.copy_(torch.randn(rows, width) * 0.1)
    param = nn.Parameter(weight.detach().clone())
    opt = pyoptim.RowWiseAdagrad([param], lr=lr, eps=eps,
                                 weight_decay=wd if mode != "none" else 0.0,
                                 weight_decay_mode="decoupled" if mode == "decoupled" else "l2")
    start = param.detach().clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, rows, (bags * per_bag,), generator=gen)
        offsets = torch.arange(0, bags * per_bag + 1, per_bag)
        grad_out = torch.randn(bags, width, generator=gen)
        tbe(idx, offsets).backward(grad_out)  # FBGEMM updates its table in the backward
        param.grad = torch.sparse_coo_tensor(idx.view(1, -1),
                                             grad_out.repeat_interleave(per_bag, 0),
                                             (rows, width))
        opt.step()
    torch.testing.assert_close(param.detach(), tbe.split_embedding_weights()[0],
                               **ROWWISE_ADAGRAD_VS_FBGEMM)
    torch.testing.assert_close(opt.state[param]["sum"], tbe.split_optimizer_states()[0][0],
                               **ROWWISE_ADAGRAD_VS_FBGEMM)
    assert not torch.equal(param.detach(), start)


# ---- class level ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_class_matches_reference_and_state():
    """An nn.Embedding(sparse=True) and a dense Linear in two groups (decoupled decay in one),
    with a scheduler: the class equals the op-level reference; state is `step` (float32, 0-dim)
    and `sum` ([rows], float32)."""
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16, sparse=True)
    lin = nn.Linear(16, 3)
    opt = pyoptim.RowWiseAdagrad([{"params": emb.parameters()},
                                  {"params": lin.parameters(), "weight_decay": 0.05,
                                   "weight_decay_mode": "decoupled"}], lr=0.1, lr_decay=0.01,
                                 initial_accumulator_value=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    refs = [(p.detach().clone(), torch.full((p.shape[0],), 0.1)) for p in
            (emb.weight, lin.weight, lin.bias)]
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        lrs = [g["lr"] for g in opt.param_groups]
        idx = torch.randint(0, 50, (20,), generator=gen)
        opt.zero_grad()
        lin(emb(idx)).pow(2).sum().backward()
        grads = [emb.weight.grad, lin.weight.grad, lin.bias.grad]
        opt.step()
        sched.step()
        for (ref, s), g, k in zip(refs, grads, (0, 1, 1)):
            rowwise_adagrad_reference(ref, g, s, step, lr=lrs[k], lr_decay=0.01, eps=1e-10,
                                      weight_decay=0.05 * k, decoupled=True)
    for p, (ref, s) in zip((emb.weight, lin.weight, lin.bias), refs):
        st = opt.state[p]
        assert st["step"].dtype == torch.float32 and st["step"].item() == 4
        assert st["sum"].shape == (p.shape[0],) and st["sum"].dtype == torch.float32
        assert_bitwise_equal([p.detach(), st["sum"]], [ref, s])


@pytest.mark.usefixtures("one_thread")
def test_state_dict_round_trip():
    torch.manual_seed(7)
    a = nn.Embedding(30, 8, sparse=True)
    b = copy.deepcopy(a)
    opt_a = pyoptim.RowWiseAdagrad(a.parameters(), lr=0.05, weight_decay=0.01)

    def train(model, opt, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            idx = torch.randint(0, 30, (12,), generator=gen)
            opt.zero_grad()
            model(idx).pow(2).sum().backward()
            opt.step()

    train(a, opt_a, 3, 8)
    b.load_state_dict(a.state_dict())
    opt_b = pyoptim.RowWiseAdagrad(b.parameters(), lr=1.0)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["lr"] == 0.05
    assert opt_b.state[b.weight]["step"].item() == 3
    before = a.weight.detach().clone()
    train(a, opt_a, 2, 9)
    train(b, opt_b, 2, 9)
    assert not torch.equal(a.weight.detach(), before)
    assert_bitwise_equal(a.weight.detach(), b.weight.detach())


def test_load_state_dict_hooks_see_and_keep_float32_sum():
    """load_then (pyoptim/_state.py): a 16-bit param's float32 `sum` is taken from the
    state dict as the load pre-hooks left it, before the post-hooks run (it was taken again from
    the dict given to load_state_dict after torch's load: a pre-hook's change was lost, the
    post-hooks saw a bfloat16 sum and their changes were overwritten)."""
    p = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_()
    opt = pyoptim.RowWiseAdagrad([p], lr=0.1)
    p.grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)).bfloat16()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())

    def pre(o, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0]["sum"] = torch.full((6,), 7.0)
        return state_dict

    seen = []

    def post(o):
        seen.append(o.state[p]["sum"].clone())
        o.state[p]["sum"] = o.state[p]["sum"] + 1

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert_bitwise_equal(seen[0], torch.full((6,), 7.0))
    assert_bitwise_equal(opt.state[p]["sum"], torch.full((6,), 8.0))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dname)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_16bit_state_dict_resumes_bitwise(dtype, sparse):
    """`sum` of a 16-bit param stays float32 through state_dict / load_state_dict (torch's load
    casts floating state to the param's dtype), so a resumed run equals an uninterrupted one."""
    gen = torch.Generator().manual_seed(5)
    p0 = torch.randn(6, 4, generator=gen).to(dtype)
    grads = []
    for _ in range(4):
        if sparse:
            idx = torch.randint(0, 6, (5,), generator=gen)
            grads.append(make_grad(idx, (6, 4), dtype, gen))
        else:
            grads.append(torch.randn(6, 4, generator=gen).to(dtype))
    a = p0.clone().requires_grad_()
    opt_a = pyoptim.RowWiseAdagrad([a], lr=0.1, weight_decay=0.01)
    b = p0.clone().requires_grad_()
    opt_b = pyoptim.RowWiseAdagrad([b], lr=0.1, weight_decay=0.01)
    for g in grads[:2]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    sd = copy.deepcopy(opt_b.state_dict())
    assert sd["state"][0]["sum"].dtype == torch.float32
    c = b.detach().clone().requires_grad_()
    opt_c = pyoptim.RowWiseAdagrad([c], lr=1.0)
    opt_c.load_state_dict(sd)
    assert opt_c.state[c]["sum"].dtype == torch.float32
    assert_bitwise_equal(opt_c.state[c]["sum"], opt_a.state[a]["sum"])
    resumed = snapshot([c, opt_c.state[c]["sum"]])
    for g in grads[2:]:
        a.grad, c.grad = g.clone(), g.clone()
        opt_a.step()
        opt_c.step()
    # the resumed steps moved param and sum (a step that wrote nothing would agree too)
    assert all(any_changed([x], [y]) for x, y in zip(resumed, [c, opt_c.state[c]["sum"]]))
    assert_bitwise_equal([c.detach(), opt_c.state[c]["sum"]], [a.detach(), opt_a.state[a]["sum"]])


@pytest.mark.parametrize("step", [2, 2.0], ids=["int", "float"])
def test_loaded_step_number_becomes_a_tensor(step):
    """A checkpoint whose `step` is a number loads as torch.optim.Adagrad loads one (a 0-dim
    tensor) and resumes bitwise. (The op raised a schema error: 'Expected a value of type
    List[Tensor] for argument state_steps'.)"""
    gen = torch.Generator().manual_seed(4)
    a = nn.Parameter(torch.randn(5, 3, generator=gen))
    grads = [torch.randn(5, 3, generator=gen) for _ in range(3)]
    opt_a = pyoptim.RowWiseAdagrad([a], lr=0.1, lr_decay=0.1)
    for g in grads[:2]:
        a.grad = g.clone()
        opt_a.step()
    sd = copy.deepcopy(opt_a.state_dict())
    sd["state"][0]["step"] = step
    b = nn.Parameter(a.detach().clone())
    opt_b = pyoptim.RowWiseAdagrad([b], lr=0.1, lr_decay=0.1)
    opt_b.load_state_dict(sd)
    a.grad, b.grad = grads[2].clone(), grads[2].clone()
    opt_a.step()
    opt_b.step()
    assert_bitwise_equal(snapshot([b, opt_b.state[b]]), snapshot([a, opt_a.state[a]]))


@pytest.mark.usefixtures("one_thread")
def test_16bit_sum_from_the_pre_hooks_dict():
    """The float32 `sum` of a 16-bit param is re-taken from the state dict torch loads, the one
    the load_state_dict pre-hooks return (params matched by name, the checkpoint's in another
    order), before the post-hooks run. (It came from the dict passed in, by position: the
    other table's accumulator.)"""
    gen = torch.Generator().manual_seed(3)
    params = [nn.Parameter(torch.randn(4, 3, generator=gen).bfloat16()) for _ in range(2)]
    src = pyoptim.RowWiseAdagrad([("a", params[0]), ("b", params[1])], lr=0.1)
    for p, scale in zip(params, (1.0, 3.0)):
        p.grad = (scale * torch.randn(4, 3, generator=gen)).bfloat16()
    src.step()
    sd = copy.deepcopy(src.state_dict())
    sd["param_groups"][0]["param_names"] = ["b", "a"]  # the same checkpoint, params swapped
    sd["state"] = {0: sd["state"][1], 1: sd["state"][0]}
    dst = pyoptim.RowWiseAdagrad([("a", params[0]), ("b", params[1])], lr=0.1)
    dst.register_load_state_dict_pre_hook(names_matching)
    seen = []
    dst.register_load_state_dict_post_hook(
        lambda opt: seen.append(snapshot([opt.state[p]["sum"] for p in params])))
    dst.load_state_dict(sd)
    assert_bitwise_equal(seen, [snapshot([src.state[p]["sum"] for p in params])])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lr=-1.0), ValueError, "Invalid learning rate"),
    (dict(eps=-1.0), ValueError, "Invalid epsilon value"),
    (dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value"),
    (dict(lr_decay=-1.0), ValueError, "Invalid lr_decay value"),
    (dict(initial_accumulator_value=-1.0), ValueError, "Invalid initial_accumulator_value"),
    (dict(weight_decay_mode="cowclip"), ValueError, "Invalid weight_decay_mode"),
])
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        pyoptim.RowWiseAdagrad([nn.Parameter(torch.randn(3, 2))], **kwargs)


def test_complex_param_raises():
    p = nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
    opt = pyoptim.RowWiseAdagrad([p])
    p.grad = torch.randn_like(p)
    with pytest.raises(TypeError, match="complex"):
        opt.step()
    assert len(opt.state) == 0


def _bad_grads():
    vals = torch.randn(2, 3)
    return {
        "out-of-range": (IndexError, torch.sparse_coo_tensor(
            torch.tensor([[1, 6]]), vals, (6, 3), check_invariants=False)),
        "negative": (IndexError, torch.sparse_coo_tensor(
            torch.tensor([[-1, 2]]), vals, (6, 3), check_invariants=False)),
        "sparse-dim-2": (ValueError, torch.randn(6, 3).to_sparse(2)),
    }


@pytest.mark.parametrize("case", list(_bad_grads()))
def test_bad_grad_raises_before_any_write(case):
    error, bad = _bad_grads()[case]
    dense = nn.Parameter(torch.randn(4, 2))
    good = nn.Parameter(torch.randn(6, 3))
    last = nn.Parameter(torch.randn(6, 3))
    opt = pyoptim.RowWiseAdagrad([dense, good, last], lr=0.1)
    dense.grad = torch.randn(4, 2)
    good.grad = make_grad(torch.tensor([0, 5, 5]), (6, 3), torch.float32, torch.Generator())
    opt.step()  # state exists
    last.grad = bad
    before = snapshot(([dense, good, last], opt.state_dict()))
    with pytest.raises(error):
        opt.step()
    assert_bitwise_equal(snapshot(([dense, good, last], opt.state_dict())), before)


def test_op_errors():
    p, s, n = torch.randn(6, 3), torch.zeros(6), torch.tensor(0.0)
    g = torch.randn(6, 3)
    before = snapshot([p, s, n])
    with pytest.raises(TypeError, match="keeps its sums in Float"):
        rowwise_adagrad_([p], [g], [s.double()], [n], lr=0.1)
    with pytest.raises(ValueError, match="one sum per row"):
        rowwise_adagrad_([p], [g], [torch.zeros(6, 3)], [n], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        rowwise_adagrad_([p], [torch.randn(6, 4)], [s], [n], lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        rowwise_adagrad_([p], [g.double()], [s], [n], lr=0.1)
    with pytest.raises(ValueError, match="Invalid epsilon"):
        rowwise_adagrad_([p], [g], [s], [n], lr=0.1, eps=-1.0)
    with pytest.raises(ValueError, match="share"):
        rowwise_adagrad_([p, p], [g, g], [s, torch.zeros(6)], [n, torch.tensor(0.0)], lr=0.1)
    rowwise_adagrad_([p], [g], [s], [n], lr=0.1, validate_only=True)
    assert_bitwise_equal([p, s, n], before)
