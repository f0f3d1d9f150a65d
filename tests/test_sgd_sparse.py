"""pyoptim.SGD with sparse COO gradients: plain SGD equals torch exactly; momentum, nesterov,
dampening and weight decay follow the lazy definition of tests/reference_sgd.py; results agree
bitwise across ISA levels and thread counts; bad indices / shapes raise before any write."""

from __future__ import annotations

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS
from hypothesis import example, given
from hypothesis import strategies as st
from reference_sgd import sgd_sparse_reference
from tolerances import sgd_tol

import pyoptim
from pyoptim import _ops

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _sparse_grad(rows, width, nnz, dtype, gen, zipf=False, coalesced=False, extra_dims=()):
    if zipf:
        w = 1.0 / torch.arange(1, rows + 1, dtype=torch.float64)
        idx = torch.multinomial(w, nnz, replacement=True, generator=gen)
    else:
        idx = torch.randint(0, rows, (nnz,), generator=gen)
    vals = torch.randn((nnz, width) + extra_dims, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.sparse_coo_tensor(idx[None], vals, (rows, width) + extra_dims)
    return g.coalesce() if coalesced else g


def _op(p, g, buf, hp, first, scale=None):
    op_calls.sgd_sparse_(p, g, buf if hp["momentum"] else None, is_first_step=first,
                     grad_scale=None if scale is None else torch.tensor(scale), **hp)


@st.composite
def hyper(draw, plain=False):
    if plain:
        momentum, wd = 0.0, 0.0
    else:
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        wd = draw(st.sampled_from([0.0, 1e-2, 0.3]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.25]))
    return dict(lr=draw(st.sampled_from([0.01, 0.1, 1.0])), momentum=momentum,
                dampening=dampening, weight_decay=wd, nesterov=nesterov,
                maximize=draw(st.booleans()))


@given(hp=hyper(plain=True), rows=st.integers(1, 50),
       width=st.sampled_from([None, 1, 7, 16, 17, 40]), nnz=st.integers(0, 120),
       coalesced=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**31 - 1))
@example(hp=dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False), rows=50, width=None, nnz=100, coalesced=True,
         dtype=torch.float32, seed=0)
def test_plain_sparse_sgd_is_torch_exactly(isa, hp, rows, width, nnz, coalesced, dtype, seed):
    # width None: a 1-D param, whose values have no dense dims (coalesced, ATen rounds lr * value
    # before adding it; otherwise, and with dense dims, it adds with one fused multiply-add)
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(rows, width or 1, generator=gen, dtype=dtype)
    g = _sparse_grad(rows, width or 1, nnz, dtype, gen, coalesced=coalesced)
    if width is None:
        p = p[:, 0].contiguous()
        g = torch.sparse_coo_tensor(g._indices(), g._values()[:, 0], (rows,),
                                    is_coalesced=g.is_coalesced())
    expect = p.clone()
    expect.add_(-g if hp["maximize"] else g, alpha=-hp["lr"])  # torch.optim.SGD's sparse step
    start = p.clone()
    _op(p, g, None, hp, first=False)
    assert torch.equal(p, expect)
    if nnz > 0:
        assert not torch.equal(p, start)


# (param layout, grad kind): ATen's CPU add_ adds the entries of a sparse grad in turn only to a
# contiguous param from contiguous values (of the grad add_ sees: negated under maximize);
# otherwise it coalesces the grad first and adds each summed row (Note [Sparse SGD]).
_LAYOUT_CASES = [
    ("transposed", "hybrid"), ("transposed", "fully_sparse"), ("transposed", "coalesced_1d"),
    ("contiguous", "transposed_values"), ("contiguous", "strided_1d_values"),
    ("contiguous", "no_sparse_dim"), ("transposed", "single_entry"),
]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout,kind", _LAYOUT_CASES, ids=lambda c: str(c))
def test_plain_sparse_sgd_layouts_are_torchs(layout, kind, dtype, maximize):
    """torch.optim.SGD's plain sparse step on params and values of every layout, bit for bit:
    at most 16 entries, which torch's coalesce() sums in position order, as pyoptim does."""
    gen = torch.Generator().manual_seed(7)
    shape = (6, 5) if kind != "coalesced_1d" else (9,)
    p0 = torch.randn(shape, generator=gen, dtype=dtype)

    def param():  # p0's values in the layout of the case
        if layout == "contiguous":
            return torch.nn.Parameter(p0.clone())
        # a transposed matrix; a 1-D param: every other element of a buffer
        t = torch.empty(5, 6, dtype=dtype).t() if len(shape) == 2 else \
            torch.empty(9, 2, dtype=dtype)[:, 0]
        return torch.nn.Parameter(t.copy_(p0))

    p_ours, p_theirs = param(), param()
    assert p_ours.is_contiguous() == (layout == "contiguous")
    ours = pyoptim.SGD([p_ours], lr=0.3, maximize=maximize)
    theirs = torch.optim.SGD([p_theirs], lr=0.3, maximize=maximize)

    def grad():
        nnz = 1 if kind == "single_entry" else 12
        rows = torch.randint(0, 3, (nnz,), generator=gen)  # duplicates
        if kind == "fully_sparse" or kind == "single_entry":
            idx = torch.stack([rows, torch.randint(0, 2, (nnz,), generator=gen)])
            return torch.sparse_coo_tensor(idx, torch.randn(nnz, generator=gen, dtype=dtype),
                                           shape)
        if kind == "coalesced_1d":
            return torch.sparse_coo_tensor(rows[None], torch.randn(nnz, generator=gen,
                                                                   dtype=dtype), shape).coalesce()
        if kind == "strided_1d_values":
            idx = torch.stack([rows, torch.randint(0, 2, (nnz,), generator=gen)])
            vals = torch.randn(nnz, 2, generator=gen, dtype=dtype)[:, 0]
            return torch.sparse_coo_tensor(idx, vals, shape)
        if kind == "no_sparse_dim":
            vals = torch.randn(3, *shape, generator=gen, dtype=dtype)
            return torch.sparse_coo_tensor(torch.zeros(0, 3, dtype=torch.long), vals, shape)
        vals = torch.randn(shape[1], nnz, generator=gen, dtype=dtype)
        vals = vals.t() if kind == "transposed_values" else vals.t().contiguous()
        return torch.sparse_coo_tensor(rows[None], vals, shape)

    for _ in range(4):
        g = grad()
        p_ours.grad = p_theirs.grad = g  # one grad: clone() would make its values contiguous
        ours.step()
        theirs.step()
    assert torch.equal(p_ours, p_theirs)
    assert not torch.equal(p_ours, p0)


@given(hp=hyper(), rows=st.integers(1, 40), width=st.sampled_from([1, 3, 8, 16, 33]),
       nnz=st.integers(1, 100), dtype=st.sampled_from(DTYPES), steps=st.integers(1, 3),
       scale=st.sampled_from([None, 256.0]), coalesced=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_lazy_sparse_sgd_matches_reference(isa, hp, rows, width, nnz, dtype, steps, scale,
                                           coalesced, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(rows, width, generator=gen, dtype=torch.float64).to(dtype)
    buf = torch.zeros_like(p)
    rp, rb = p.clone(), buf.clone()
    touched = torch.zeros(rows, dtype=torch.bool)
    start = p.clone()
    for s in range(steps):
        g = _sparse_grad(rows, width, nnz, dtype, gen, coalesced=coalesced)
        touched[g._indices()[0]] = True
        _op(p, g, buf, hp, first=(s == 0), scale=scale)
        sgd_sparse_reference(rp, g, rb if hp["momentum"] else None, first=(s == 0),
                             grad_scale=scale, **hp)
    torch.testing.assert_close(p, rp, equal_nan=True, **sgd_tol(dtype, steps))
    torch.testing.assert_close(buf, rb, equal_nan=True, **sgd_tol(dtype, steps))
    # lazy: rows never present are untouched, in the param and in the buffer
    assert torch.equal(p[~touched], start[~touched])
    assert not buf[~touched].any()
    if dtype in (torch.float32, torch.float64):
        assert not torch.equal(p[touched], start[touched])


def test_lazy_definition_by_hand():
    """One concrete row-by-row check of the documented definition (no reference code)."""
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    buf = torch.zeros_like(p)
    g1 = torch.sparse_coo_tensor([[0, 2, 0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], (3, 2))
    hp = dict(lr=0.5, momentum=0.5, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False)
    _op(p, g1, buf, hp, first=True)
    # row 0: g = 1 + 3 = 4 -> buf = 4, p = 1 - 2 = -1 / 2 - 2 = 0; row 2: g = 2 -> p = 5 - 1
    assert torch.equal(buf, torch.tensor([[4.0, 4.0], [0.0, 0.0], [2.0, 2.0]]))
    assert torch.equal(p, torch.tensor([[-1.0, 0.0], [3.0, 4.0], [4.0, 5.0]]))
    g2 = torch.sparse_coo_tensor([[1]], [[2.0, 2.0]], (3, 2))
    _op(p, g2, buf, hp, first=False)
    # row 1 first seen now: buf = 0.5 * 0 + 2 = 2, p = 3 - 1; rows 0 and 2 do not move
    assert torch.equal(buf, torch.tensor([[4.0, 4.0], [2.0, 2.0], [2.0, 2.0]]))
    assert torch.equal(p, torch.tensor([[-1.0, 0.0], [2.0, 3.0], [4.0, 5.0]]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("zipf", [False, True], ids=["uniform", "zipf"])
@pytest.mark.parametrize("plain", [False, True], ids=["lazy", "plain"])
def test_sparse_bitwise_across_isa_and_threads(dtype, zipf, plain):
    """Large enough for the rows to be split over threads: the same bits for every level and
    thread count; plain SGD (each duplicate applied in turn) also gives torch's float32 bits."""
    gen = torch.Generator().manual_seed(7)
    rows, width = 5000, 48
    p0 = torch.randn(rows, width, generator=gen).to(dtype)
    grads = [_sparse_grad(rows, width, 8192, dtype, gen, zipf=zipf) for _ in range(2)]
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True,
              maximize=False)
    if plain:
        hp.update(momentum=0.0, weight_decay=0.0, nesterov=False)
    out = []
    old = torch.get_num_threads()
    try:
        for level in ISA_LEVELS:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                with _ops.cpu_capability_override(level):
                    p, b = p0.clone(), torch.zeros_like(p0)
                    for s, g in enumerate(grads):
                        _op(p, g, b, hp, first=(s == 0))
                out.append((level, threads, p, b))
    finally:
        torch.set_num_threads(old)
    assert not torch.equal(out[0][2], p0)
    for level, threads, p, b in out[1:]:
        assert torch.equal(p, out[0][2]), (level, threads)
        assert torch.equal(b, out[0][3]), (level, threads)
    if plain and dtype == torch.float32:
        expect = p0.clone()
        for g in grads:
            expect.add_(g, alpha=-hp["lr"])  # torch.optim.SGD's sparse step
        assert torch.equal(out[0][2], expect)


def test_sparse_hybrid_and_multi_sparse_dims():
    """3-d param with a (1 sparse, 2 dense) grad, and a fully sparse 2-d grad (2 sparse dims)."""
    gen = torch.Generator().manual_seed(1)
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=False,
              maximize=False)
    p = torch.randn(6, 4, 3, generator=gen)
    g = _sparse_grad(6, 4, 10, torch.float32, gen, extra_dims=(3,))
    b = torch.zeros_like(p)
    rp, rb, start = p.clone(), b.clone(), p.clone()
    _op(p, g, b, hp, first=True)
    sgd_sparse_reference(rp, g, rb, first=True, **hp)
    assert torch.equal(p, rp) and torch.equal(b, rb)
    assert not torch.equal(p, start)
    p2 = torch.randn(5, 7, generator=gen)
    idx = torch.stack([torch.randint(0, 5, (20,), generator=gen),
                       torch.randint(0, 7, (20,), generator=gen)])
    g2 = torch.sparse_coo_tensor(idx, torch.randn(20, generator=gen), (5, 7))
    b2 = torch.zeros_like(p2)
    rp2, rb2, start2 = p2.clone(), b2.clone(), p2.clone()
    _op(p2, g2, b2, hp, first=True)
    sgd_sparse_reference(rp2, g2, rb2, first=True, **hp)
    assert torch.equal(p2, rp2) and torch.equal(b2, rb2)
    assert not torch.equal(p2, start2)


# ---- class level -----------------------------------------------------------------------------

def _embedding_model(bag: bool):
    torch.manual_seed(0)
    if bag:
        return torch.nn.EmbeddingBag(200, 16, mode="sum", sparse=True)
    return torch.nn.Embedding(200, 16, sparse=True)


def _train(model, opt, steps, bag, seed=3, zipf=True):
    gen = torch.Generator().manual_seed(seed)
    w = 1.0 / torch.arange(1, 201, dtype=torch.float64)
    for _ in range(steps):
        idx = torch.multinomial(w if zipf else torch.ones(200), 64, replacement=True,
                                generator=gen).view(8, 8)
        opt.zero_grad()
        torch.tanh(model(idx)).pow(2).sum().backward()
        opt.step()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
@pytest.mark.parametrize("maximize", [False, True])
def test_sparse_class_parity_with_torch(bag, maximize):
    """200 steps of sparse SGD without momentum: bitwise what torch.optim.SGD gives."""
    a, b = _embedding_model(bag), _embedding_model(bag)
    start = a.weight.detach().clone()
    oa = torch.optim.SGD(a.parameters(), lr=0.1, maximize=maximize)
    ob = pyoptim.SGD(b.parameters(), lr=0.1, maximize=maximize)
    _train(a, oa, 200, bag)
    _train(b, ob, 200, bag)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(b.weight, start)
    assert len(ob.state) == 0


@pytest.mark.usefixtures("one_thread")
def test_sparse_class_momentum_is_lazy():
    """Momentum + weight decay on an Embedding: rows never looked up never move; the buffer
    exists (dense, torch's state key) and state_dict loads into torch.optim.SGD."""
    m = _embedding_model(False)
    start = m.weight.detach().clone()
    opt = pyoptim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    used = torch.zeros(200, dtype=torch.bool)
    for _ in range(5):
        idx = torch.randint(0, 100, (32,), generator=gen)  # rows 100.. never used
        used[idx] = True
        opt.zero_grad()
        m(idx).pow(2).sum().backward()
        opt.step()
    assert torch.equal(m.weight[~used], start[~used])
    assert not torch.equal(m.weight[used], start[used])
    buf = opt.state[m.weight]["momentum_buffer"]
    assert buf.layout == torch.strided and not buf[~used].any() and buf[used].any()
    t = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    t.load_state_dict(opt.state_dict())
    assert torch.equal(t.state[m.weight]["momentum_buffer"], buf)


@pytest.mark.usefixtures("one_thread")
def test_sparse_class_matches_reference_over_steps():
    """The class (lazy momentum, dampening, wd) against the reference definition, 20 steps."""
    m = _embedding_model(True)
    hp = dict(lr=0.05, momentum=0.8, dampening=0.2, weight_decay=0.05, nesterov=False,
              maximize=False)
    opt = pyoptim.SGD(m.parameters(), **hp)
    rp, rb = m.weight.detach().clone(), torch.zeros(200, 16)
    gen = torch.Generator().manual_seed(9)
    for s in range(20):
        idx = torch.randint(0, 200, (8, 8), generator=gen)
        opt.zero_grad()
        m(idx).pow(2).sum().backward()
        g = m.weight.grad.clone()
        opt.step()
        sgd_sparse_reference(rp, g, rb, first=(s == 0), **hp)
    assert torch.equal(m.weight, rp)
    assert torch.equal(opt.state[m.weight]["momentum_buffer"], rb)


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["too_large", "negative", "shape", "dtype", "buf"])
def test_sparse_errors_change_nothing(case):
    p = torch.randn(10, 4)
    buf = torch.randn(10, 4)
    snap = (p.clone(), buf.clone())
    idx = torch.tensor([[1, 3, 3]])
    vals = torch.randn(3, 4)
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=False,
              maximize=False)
    err = ValueError
    b = buf
    if case == "too_large":
        g = torch.sparse_coo_tensor(torch.tensor([[1, 10, 3]]), vals, (11, 4))
        g = torch.sparse_coo_tensor(g._indices(), g._values(), (10, 4),
                                    check_invariants=False)
        err = IndexError
    elif case == "negative":
        g = torch.sparse_coo_tensor(torch.tensor([[1, -1, 3]]), vals, (10, 4),
                                    check_invariants=False)
        err = IndexError
    elif case == "shape":
        g = torch.sparse_coo_tensor(idx, vals, (12, 4))
    elif case == "dtype":
        g = torch.sparse_coo_tensor(idx, vals.double(), (10, 4))
        err = TypeError
    elif case == "buf":
        g = torch.sparse_coo_tensor(idx, vals, (10, 4))
        b = torch.randn(9, 4)
    with pytest.raises(err):
        op_calls.sgd_sparse_(p, g, b, is_first_step=False, **hp)
    assert torch.equal(p, snap[0]) and torch.equal(buf, snap[1])
    good = torch.sparse_coo_tensor(idx, vals, (10, 4))
    op_calls.sgd_sparse_(p, good, buf, is_first_step=False, **hp)
    assert not torch.equal(p, snap[0])


def test_sparse_class_error_changes_nothing():
    """An out-of-range sparse grad in a group: the class raises IndexError, nothing moves."""
    emb = torch.nn.Embedding(10, 4, sparse=True)
    lin = torch.nn.Linear(4, 2)
    opt = pyoptim.SGD(list(emb.parameters()) + list(lin.parameters()), lr=0.1)
    snap = [p.detach().clone() for p in (emb.weight, lin.weight)]
    emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[0, 12]]), torch.randn(2, 4),
                                              (10, 4), check_invariants=False)
    lin.weight.grad = torch.randn(2, 4)
    with pytest.raises(IndexError):
        opt.step()
    assert torch.equal(emb.weight, snap[0])
    # the dense params of the group were not stepped either: sparse grads are checked first
    assert torch.equal(lin.weight, snap[1])


def test_bench_sgd_workloads_run():
    """bench/workloads_sgd.py is discovered and its sparse workloads run (tiny scale, no
    timing assertions): pyoptim is the baseline, torch's loop is timed next to it."""
    from bench import __main__ as cli
    from bench import harness

    found = [w for w in harness.discover(harness.BenchConfig(scale=1 / 65536)) if w.group == "sgd"]
    assert len(found) == 6 and all("pyoptim" in w.impls for w in found)
    args = ["--quick", "--scale", str(1 / 65536), "--repeat", "2", "--min-time", "0",
            "--no-latest", "--no-probe", "--filter", "^sgd-sparse/"]
    res = cli.main(args, out=lambda line: None)
    assert len(res["workloads"]) == 2
    for w in res["workloads"]:
        assert {r["impl"] for r in w["rows"]} == {"torch-forloop", "pyoptim", "pyoptim-momentum",
                                                   "row-probe"}
        assert all(r["median_ms"] > 0 for r in w["rows"])
