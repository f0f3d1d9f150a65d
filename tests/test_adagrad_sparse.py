"""pyoptim.Adagrad with sparse (COO) grads: the sparse_adagrad_ op vs a plain-PyTorch reference of
torch's sparse branch, ISA / thread-count agreement, parity with torch.optim.Adagrad on sparse
embeddings (dense params in the same step), empty grads, and bad input (clear error, nothing
changed, the dense params of the same step included).

Reference: tests/reference_adagrad_rows.py; tolerance: tolerances.sparse_adagrad_tol.
"""

from __future__ import annotations

import copy

import op_calls  # noqa: F401  (registers the ops)
import pytest
import torch
from helpers import assert_bitwise_equal, snapshot
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pyoptim
from pyoptim import _ops
from tests.reference_adagrad_rows import sparse_adagrad_reference
from tests.reference_sparse_adam import ieee_torch_mode
from tests.test_sparse_adam import WIDTHS, dname, draw_indices, make_grad
from tests.tolerances import sparse_adagrad_tol

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LEVELS = _ops.available_cpu_capabilities()
ops = torch.ops.pyoptim


def sparse_adagrad_(params, grads, sums, steps, *, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                    maximize=False, lr_tensor=None, validate_only=False):
    ops.sparse_adagrad_.default(params, grads, sums, steps, [len(params)],
                                [lr, lr_decay, weight_decay, eps], [maximize],
                                [lr_tensor] if lr_tensor is not None else [], validate_only)


def assert_close(actual, expected, dtype, steps, msg=""):
    tol = sparse_adagrad_tol(dtype, steps)
    if tol["atol"] == 0 and tol["rtol"] == 0:
        assert_bitwise_equal(actual, expected, msg)
    else:
        torch.testing.assert_close(actual, expected, msg=msg, **tol)


hyper = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 0.1, 0.5]),
    "lr_decay": st.sampled_from([0.0, 0.1]),
    "eps": st.sampled_from([1e-10, 1e-3]),
    "maximize": st.booleans(),
    "init": st.sampled_from([0.0, 0.1]),
})


# ---- op vs reference (property-based) -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@given(
    width=st.sampled_from(WIDTHS),
    n_rows=st.sampled_from([1, 2, 5, 64, 300]),
    nnz=st.sampled_from([0, 1, 2, 17, 100, 600]),
    kind=st.sampled_from(["uniform", "repeated", "single", "zipf"]),
    steps=st.integers(1, 3),
    hp=hyper,
    seed=st.integers(0, 2**16),
)
def test_matches_reference(isa, dtype, width, n_rows, nnz, kind, steps, hp, seed):
    """Duplicates up to 600 per row ("single", "repeated": more than one block of 256)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = [make_grad(draw_indices(kind, nnz, n_rows, gen), shape, dtype, gen)
             for _ in range(steps)]
    p1, p2 = param.clone(), param.clone()
    s1, s2 = torch.full_like(param, hp["init"]), torch.full_like(param, hp["init"])
    n1 = torch.tensor(0.0)
    kw = dict(lr=hp["lr"], lr_decay=hp["lr_decay"], eps=hp["eps"], maximize=hp["maximize"])
    for step, g in enumerate(grads, start=1):
        sparse_adagrad_([p1], [g], [s1], [n1], **kw)
        sparse_adagrad_reference(p2, g, s2, step, **kw)
    assert n1.item() == steps
    assert_close(p1, p2, dtype, steps, f"param {isa}")
    assert_close(s1, s2, dtype, steps, f"sum {isa}")
    if nnz > 0:
        assert not torch.equal(s1, torch.full_like(param, hp["init"])), "the sum did not move"
        if dtype in (torch.float32, torch.float64) or hp["lr"] >= 0.1:
            assert not torch.equal(p1, param), "the step changed nothing"
    else:
        assert torch.equal(p1, param)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape,sparse_dim", [((6, 5, 7), 2), ((5, 4, 3), 3), ((40,), 1)])
def test_general_sparse_dims(dtype, shape, sparse_dim):
    gen = torch.Generator().manual_seed(1)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    idx = torch.stack([torch.randint(0, shape[d], (23,), generator=gen) for d in range(sparse_dim)])
    vals = torch.randn((23, *shape[sparse_dim:]), generator=gen, dtype=torch.float64).to(dtype)
    g = torch.sparse_coo_tensor(idx, vals, shape)
    p1, p2 = param.clone(), param.clone()
    s1, s2 = torch.zeros_like(param), torch.zeros_like(param)
    for step in (1, 2):
        sparse_adagrad_([p1], [g], [s1], [torch.tensor(float(step - 1))], lr=0.1)
        sparse_adagrad_reference(p2, g, s2, step, lr=0.1, lr_decay=0.0, eps=1e-10)
    assert_close(p1, p2, dtype, 2, str(shape))
    assert_close(s1, s2, dtype, 2, str(shape))
    assert not torch.equal(p1, param)


@pytest.mark.parametrize("layout", ["transposed", "row_slice"])
def test_strided_params(layout):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(64, 48, generator=gen)
    view = base.t() if layout == "transposed" else base[::2]
    ref = view.clone()
    s, s_ref = torch.zeros_like(view), torch.zeros_like(view)
    g = make_grad(torch.randint(0, view.shape[0], (50,), generator=gen), view.shape,
                  torch.float32, gen)
    sparse_adagrad_([view], [g], [s], [torch.tensor(0.0)], lr=0.1)
    sparse_adagrad_reference(ref, g, s_ref, 1, lr=0.1, lr_decay=0.0, eps=1e-10)
    assert_close(view, ref, torch.float32, 1, layout)
    assert_close(s, s_ref, torch.float32, 1, layout)


# ---- agreement: ISA levels, thread counts -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("width", [1, 13, 128, 4099])
def test_bitwise_across_levels_and_threads(dtype, width, restore_num_threads):
    gen = torch.Generator().manual_seed(3)
    n_rows = max(64, 200000 // width)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = [make_grad(draw_indices("zipf", 3000, n_rows, gen), shape, dtype, gen)
             for _ in range(2)]
    results = []
    for level in LEVELS:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            p, s, n = param.clone(), torch.zeros_like(param), torch.tensor(0.0)
            with _ops.cpu_capability_override(level):
                for g in grads:
                    sparse_adagrad_([p], [g], [s], [n], lr=0.01, lr_decay=0.01, maximize=True)
            results.append((level, threads, p, s))
    _, _, p0, s0 = results[0]
    assert not torch.equal(p0, param)
    for level, threads, p, s in results[1:]:
        assert torch.equal(p, p0) and torch.equal(s, s0), (level, threads)


# ---- class level: parity with torch.optim.Adagrad -----------------------------------------------


class Tables(nn.Module):
    """Two sparse tables (an Embedding and an EmbeddingBag) and a dense Linear head."""

    def __init__(self, dtype):
        super().__init__()
        self.users = nn.Embedding(300, 16, sparse=True, dtype=dtype)
        self.items = nn.EmbeddingBag(500, 16, mode="sum", sparse=True, dtype=dtype)
        self.head = nn.Linear(16, 1, dtype=dtype)

    def forward(self, u, i):
        return self.head(self.users(u[::2]) * self.items(i.view(-1, 2))).squeeze(-1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dname)
@pytest.mark.parametrize("flags", [dict(), dict(maximize=True, lr_decay=0.05),
                                   dict(initial_accumulator_value=0.1, eps=1e-3)],
                         ids=["default", "maximize-lr_decay", "init-eps"])
def test_parity_with_torch(dtype, flags):
    """torch.optim.Adagrad's own code (IEEE sqrt and pyoptim's duplicate order pinned:
    ieee_torch_mode) vs pyoptim over 50 steps of sparse tables and a dense head in one group:
    bitwise. The dense head steps on the dense kernel in the same step."""
    torch.manual_seed(0)
    model = Tables(dtype)
    ours_model = copy.deepcopy(model)
    theirs = torch.optim.Adagrad(model.parameters(), lr=0.05, **flags)
    ours = pyoptim.Adagrad(ours_model.parameters(), lr=0.05, **flags)
    start = [p.detach().clone() for p in ours_model.parameters()]
    gen = torch.Generator().manual_seed(4)
    w = 1.0 / torch.arange(1, 501, dtype=torch.float64) ** 1.2
    for _ in range(50):
        u = torch.randint(0, 300, (64,), generator=gen)
        i = torch.multinomial(w, 64, replacement=True, generator=gen)
        y = torch.randn(32, generator=gen, dtype=dtype)
        for mdl, opt in ((model, theirs), (ours_model, ours)):
            opt.zero_grad()
            ((mdl(u, i) - y) ** 2).mean().backward()
            if opt is theirs:
                with ieee_torch_mode():
                    opt.step()
            else:
                opt.step()
    for (name, a), b in zip(ours_model.named_parameters(), model.parameters()):
        if name.startswith("head"):  # the dense kernel (adagrad_): bitwise where ATen fuses
            assert_close(a, b, dtype, 50, name)  # add(alpha) / addcmul (sgd_tol's premise)
            assert_close(ours.state[a]["sum"], theirs.state[b]["sum"], dtype, 50, name)
        else:
            assert_bitwise_equal(a, b, name)
            assert_bitwise_equal(ours.state[a]["sum"], theirs.state[b]["sum"], name)
        assert ours.state[a]["step"].item() == theirs.state[b]["step"].item() == 50
    for p, p0 in zip(ours_model.parameters(), start):
        assert not torch.equal(p.detach(), p0)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shape,idx", [((7,), [3]), ((7,), [3, 3, 3]), ((7,), [3, 5]),
                                       ((4, 3), [[1], [2]]), ((4, 3), [[1, 1], [2, 2]]),
                                       ((4, 3), [1]), ((4, 1), [2])], ids=str)
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_single_element_rounding_is_torchs(shape, idx, transposed):
    """torch's param.add_(sparse, alpha=-clr) rounds the product first for a grad with one
    touched element and no dense dims, added to a contiguous param (ATen's non-hybrid path,
    Note [Sparse Adagrad]), and fuses it otherwise (a transposed param: ATen's coalescing path):
    30 steps of each kind equal torch's (IEEE sqrt pinned) bit for bit."""
    if transposed and (len(shape) < 2 or min(shape) < 2):
        pytest.skip("transposing a 1-D param or a single column leaves it contiguous")
    idx = torch.tensor(idx).view(len(shape) if isinstance(idx[0], list) else 1, -1)
    gen = torch.Generator().manual_seed(12)
    p0 = torch.randn(shape, generator=gen)
    if transposed:
        p0 = p0.t().contiguous().t()
    p_ours = nn.Parameter(p0)
    p_theirs = nn.Parameter(p0.clone(memory_format=torch.preserve_format))
    assert p_ours.is_contiguous() != transposed
    ours = pyoptim.Adagrad([p_ours], lr=0.3, lr_decay=0.01)
    theirs = torch.optim.Adagrad([p_theirs], lr=0.3, lr_decay=0.01)
    for _ in range(30):
        vals = torch.randn((idx.shape[1], *shape[idx.shape[0]:]), generator=gen) * 100
        g = torch.sparse_coo_tensor(idx, vals, shape)
        p_ours.grad, p_theirs.grad = g, g.clone()
        ours.step()
        with ieee_torch_mode():
            theirs.step()
    assert_bitwise_equal(p_ours.detach(), p_theirs.detach())
    assert_bitwise_equal(ours.state[p_ours]["sum"], theirs.state[p_theirs]["sum"])


@pytest.mark.usefixtures("one_thread")
def test_empty_grad_counts_step():
    p_ours = nn.Parameter(torch.randn(10, 4))
    p_theirs = nn.Parameter(p_ours.detach().clone())
    ours, theirs = pyoptim.Adagrad([p_ours], lr_decay=0.5), torch.optim.Adagrad([p_theirs],
                                                                               lr_decay=0.5)
    empty = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 4),
                                    (10, 4))
    before = p_ours.detach().clone()
    for p, opt in ((p_ours, ours), (p_theirs, theirs)):
        p.grad = empty.clone()
        opt.step()
        opt.step()
    assert ours.state[p_ours]["step"].item() == theirs.state[p_theirs]["step"].item() == 2
    assert torch.equal(p_ours, before)
    g = make_grad(torch.tensor([1, 1, 7]), (10, 4), torch.float32, torch.Generator())
    for p, opt in ((p_ours, ours), (p_theirs, theirs)):  # the decayed lr uses step 3
        p.grad = g.clone()
        with ieee_torch_mode():
            opt.step()
    assert_bitwise_equal(p_ours.detach(), p_theirs.detach())
    assert not torch.equal(p_ours.detach(), before)


@pytest.mark.usefixtures("one_thread")
def test_lr_tensor_and_param_groups():
    torch.manual_seed(5)
    a, b = torch.randn(20, 3), torch.randn(30, 5)
    pa, pb = nn.Parameter(a.clone()), nn.Parameter(b.clone())
    qa, qb = nn.Parameter(a.clone()), nn.Parameter(b.clone())
    ours = pyoptim.Adagrad([{"params": [pa]}, {"params": [pb], "lr": 0.3}], lr=torch.tensor(0.05))
    theirs = torch.optim.Adagrad([{"params": [qa]}, {"params": [qb], "lr": 0.3}],
                                 lr=torch.tensor(0.05))
    gen = torch.Generator().manual_seed(6)
    for _ in range(5):
        ga = make_grad(torch.randint(0, 20, (9,), generator=gen), (20, 3), torch.float32, gen)
        gb = make_grad(torch.randint(0, 30, (9,), generator=gen), (30, 5), torch.float32, gen)
        pa.grad, pb.grad, qa.grad, qb.grad = ga, gb, ga.clone(), gb.clone()
        ours.step()
        with ieee_torch_mode():
            theirs.step()
    assert_bitwise_equal([pa.detach(), pb.detach()], [qa.detach(), qb.detach()])
    assert not torch.equal(pa.detach(), a)


# ---- bad input: a clear error, nothing changed ---------------------------------------------------


def _bad_grads():
    shape = (6, 3)
    vals = torch.randn(2, 3)
    return {
        "out-of-range": (IndexError, torch.sparse_coo_tensor(torch.tensor([[1, 6]]), vals, shape,
                                                             check_invariants=False)),
        "negative": (IndexError, torch.sparse_coo_tensor(torch.tensor([[-1, 2]]), vals, shape,
                                                         check_invariants=False)),
    }


@pytest.mark.parametrize("case", list(_bad_grads()))
def test_bad_sparse_grad_raises_before_any_write(case):
    """The bad grad comes last, after a good sparse param and a dense param of the same step:
    nothing is written, step counts included."""
    error, bad = _bad_grads()[case]
    dense = nn.Parameter(torch.randn(4, 2))
    good = nn.Parameter(torch.randn(6, 3))
    last = nn.Parameter(torch.randn(6, 3))
    opt = pyoptim.Adagrad([dense, good, last], lr=0.1)
    dense.grad = torch.randn(4, 2)
    good.grad = make_grad(torch.tensor([0, 5, 5]), (6, 3), torch.float32, torch.Generator())
    last.grad = bad
    before = snapshot(([dense, good, last], opt.state_dict()))
    with pytest.raises(error):
        opt.step()
    assert_bitwise_equal(snapshot(([dense, good, last], opt.state_dict())), before)


def test_op_errors():
    p, s, n = torch.randn(6, 3), torch.zeros(6, 3), torch.tensor(0.0)
    g = make_grad(torch.tensor([1, 2]), (6, 3), torch.float32, torch.Generator())
    before = snapshot([p, s, n])
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible"):
        sparse_adagrad_([p], [g], [s], [n], lr=0.1, weight_decay=0.1)
    with pytest.raises(RuntimeError, match="is dense"):
        sparse_adagrad_([p], [torch.randn(6, 3)], [s], [n], lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        sparse_adagrad_([p], [g], [s.double()], [n], lr=0.1)
    wrong = make_grad(torch.tensor([1, 2]), (6, 4), torch.float32, torch.Generator())
    with pytest.raises(ValueError, match="shape"):  # a grad of other dims than its param
        sparse_adagrad_([p], [wrong], [s], [n], lr=0.1)
    with pytest.raises(IndexError, match="out of range"):
        sparse_adagrad_([p, p.clone()], [g, torch.sparse_coo_tensor(
            torch.tensor([[1, 6]]), torch.randn(2, 3), (6, 3), check_invariants=False)],
            [s, s.clone()], [n, n.clone()], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        sparse_adagrad_([p], [g], [s], [n], lr=-1.0)
    with pytest.raises(ValueError, match="step count"):
        sparse_adagrad_([p], [g], [s], [torch.tensor(-1.0)], lr=0.1)
    sparse_adagrad_([p], [g], [s], [n], lr=0.1, validate_only=True)
    assert_bitwise_equal([p, s, n], before)


def test_weight_decay_with_sparse_grad_is_torchs_error():
    errors = []
    for cls in (torch.optim.Adagrad, pyoptim.Adagrad):
        p = nn.Parameter(torch.randn(4, 3))
        opt = cls([p], weight_decay=0.1)
        p.grad = torch.randn(4, 3).to_sparse()
        with pytest.raises(RuntimeError) as info:
            opt.step()
        errors.append(str(info.value))
    assert errors[0] == errors[1]
