"""pyoptim.SparseAdam: the fused sparse_adam_ op vs a plain-PyTorch reference of torch's formula,
parity with torch.optim.SparseAdam, state_dict both ways, ISA / thread-count agreement, and bad
input (clear error, nothing changed).

The reference lives in tests/reference_sparse_adam.py, the tolerance rows (SPARSE_ADAM_*) in
tests/tolerances.py. Every flag combination against torch.optim.SparseAdam: test_optim_parity.py.
"""

from __future__ import annotations

import copy

import op_calls
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyoptim
from pyoptim import _ops
from tests.reference_sparse_adam import ieee_torch_mode, sparse_adam_reference
from tests.tolerances import (
    SPARSE_ADAM_VS_REFERENCE,
    SPARSE_ADAM_VS_TORCH_IEEE,
    SPARSE_ADAM_VS_TORCH_MKL,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LEVELS = _ops.available_cpu_capabilities()
# widths around the vector widths (8 / 16 floats, 4 / 8 doubles) and a wide row
WIDTHS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 128, 129, 4096]


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def assert_close(actual, expected, dtype, table=SPARSE_ADAM_VS_REFERENCE, msg=""):
    atol, rtol = table[dtype]
    if atol == 0 and rtol == 0:
        # bitwise (NaN == NaN)
        a, e = actual.detach(), expected.detach()
        same = (a == e) | (a.isnan() & e.isnan())
        bad = (~same).sum().item()
        assert bad == 0, f"{msg}: {bad} of {a.numel()} elements differ; max abs diff " + str(
            (a.double() - e.double()).abs().nan_to_num(0).max().item()
        )
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=msg)


def make_grad(indices: torch.Tensor, shape, dtype, gen: torch.Generator) -> torch.Tensor:
    """An uncoalesced COO gradient with one value row per index (duplicates kept)."""
    nnz = indices.numel()
    values = torch.randn((nnz, *shape[1:]), generator=gen, dtype=torch.float64).to(dtype)
    return torch.sparse_coo_tensor(indices.view(1, -1), values, shape)


def draw_indices(kind: str, nnz: int, n_rows: int, gen: torch.Generator) -> torch.Tensor:
    if nnz == 0:
        return torch.zeros(0, dtype=torch.long)
    if kind == "uniform":
        return torch.randint(0, n_rows, (nnz,), generator=gen)
    if kind == "repeated":  # a few hot rows, many duplicates each
        hot = torch.randint(0, n_rows, (min(3, n_rows),), generator=gen)
        return hot[torch.randint(0, hot.numel(), (nnz,), generator=gen)]
    if kind == "single":
        return torch.full((nnz,), int(torch.randint(0, n_rows, (1,), generator=gen)))
    if kind == "zipf":
        w = 1.0 / torch.arange(1, n_rows + 1, dtype=torch.float64) ** 1.1
        return torch.multinomial(w, nnz, replacement=True, generator=gen)
    raise AssertionError(kind)


def run_steps_both(param, grads, hp, weight_decay=0.0, level=None):
    """Runs the op and the reference over the same grads; returns (ours, ref) state tuples."""
    p1, p2 = param.clone(), param.clone()
    m1, v1 = torch.zeros_like(param), torch.zeros_like(param)
    m2, v2 = torch.zeros_like(param), torch.zeros_like(param)
    for step, g in enumerate(grads, start=1):
        kw = dict(lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"])
        if level is None:
            op_calls.sparse_adam_([p1], [g], [m1], [v1], [step - 1], weight_decay=weight_decay,
                              maximize=hp["maximize"], **kw)
        else:
            with _ops.cpu_capability_override(level):
                op_calls.sparse_adam_([p1], [g], [m1], [v1], [step - 1], weight_decay=weight_decay,
                                  maximize=hp["maximize"], **kw)
        sparse_adam_reference(p2, g, m2, v2, step, maximize=hp["maximize"],
                              weight_decay=weight_decay, **kw)
    return (p1, m1, v1), (p2, m2, v2)


hyper = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 0.1, 0.5]),
        "beta1": st.sampled_from([0.0, 0.5, 0.9]),
        "beta2": st.sampled_from([0.0, 0.9, 0.999]),
        "eps": st.sampled_from([1e-8, 1e-3]),
        "maximize": st.booleans(),
    }
)


# ---- op vs reference (property-based) -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@given(
    width=st.sampled_from(WIDTHS),
    n_rows=st.sampled_from([1, 2, 5, 64, 300]),
    nnz=st.sampled_from([0, 1, 2, 17, 100, 513]),
    kind=st.sampled_from(["uniform", "repeated", "single", "zipf"]),
    steps=st.integers(1, 3),
    hp=hyper,
    weight_decay=st.sampled_from([0.0, 0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(isa, dtype, width, n_rows, nnz, kind, steps, hp, weight_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = [make_grad(draw_indices(kind, nnz, n_rows, gen), shape, dtype, gen)
             for _ in range(steps)]
    ours, ref = run_steps_both(param, grads, hp, weight_decay)
    for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), ours, ref):
        assert_close(a, e, dtype, msg=f"{name} {dname(dtype)} {isa}")
    if nnz > 0:
        # exp_avg starts at zero; the first step moves a touched element by lr |g| / (|g| + eps),
        # ~lr unless |g| ~ eps: visible in float32 / float64, and in bfloat16 / float16 for
        # lr >= 0.1 (lr = 1e-3 rounds away there: 1e-3 < ulp(1.5) / 2 in bfloat16)
        assert ours[1].any(), "exp_avg did not move"
        if dtype in (torch.float32, torch.float64) or hp["lr"] >= 0.1:
            assert not torch.equal(ours[0], param), "the step changed nothing"
    else:
        assert torch.equal(ours[0], param)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape,sparse_dim", [((6, 5, 7), 2), ((4, 3, 2, 9), 2), ((5, 4, 3), 3),
                                              ((40,), 1), ((3, 10), 0)])
def test_general_sparse_dims(dtype, shape, sparse_dim):
    """sparse_dim other than 1 (linearized over the leading dims), and 1-D params (width 1)."""
    gen = torch.Generator().manual_seed(1)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    nnz = 23 if sparse_dim > 0 else 3
    idx = torch.stack([torch.randint(0, shape[d], (nnz,), generator=gen)
                       for d in range(sparse_dim)]) if sparse_dim else torch.zeros(0, nnz,
                                                                                   dtype=torch.long)
    vals = torch.randn((nnz, *shape[sparse_dim:]), generator=gen, dtype=torch.float64).to(dtype)
    grads = [torch.sparse_coo_tensor(idx, vals, shape) for _ in range(2)]
    hp = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, maximize=False)
    ours, ref = run_steps_both(param, grads, hp)
    for a, e in zip(ours, ref):
        assert_close(a, e, dtype, msg=f"{shape} sparse_dim={sparse_dim}")
    assert not torch.equal(ours[0], param)


@pytest.mark.parametrize("layout", ["transposed", "row_slice", "col_slice"])
def test_strided_params(layout):
    """Params that are views: rows with a stride (in place) or non-contiguous rows (copies)."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(64, 48, generator=gen)
    if layout == "transposed":
        view = base.t()  # (48, 64), rows not contiguous: worked on in a copy, copied back
    elif layout == "row_slice":
        view = base[::2]  # (32, 48), row stride 96
    else:
        view = base[:, 5:37]  # (64, 32), row stride 48
    ref_param = view.clone()
    m = torch.zeros_like(view)
    v = torch.zeros_like(view)
    m_ref, v_ref = torch.zeros_like(ref_param), torch.zeros_like(ref_param)
    before = base.clone()
    for step in (1, 2):
        g = make_grad(torch.randint(0, view.shape[0], (50,), generator=gen), view.shape,
                      torch.float32, gen)
        op_calls.sparse_adam_([view], [g], [m], [v], [step - 1], lr=0.1, beta1=0.9, beta2=0.999,
                          eps=1e-8, weight_decay=0.0, maximize=False)
        sparse_adam_reference(ref_param, g, m_ref, v_ref, step, lr=0.1, beta1=0.9, beta2=0.999,
                              eps=1e-8)
    assert_close(view, ref_param, torch.float32, msg=layout)
    assert_close(v, v_ref, torch.float32, msg=layout)
    assert not torch.equal(base, before)
    if layout != "transposed":  # memory outside the view is untouched
        mask = torch.ones_like(base, dtype=torch.bool)
        if layout == "row_slice":
            mask[::2] = False
        else:
            mask[:, 5:37] = False
        assert torch.equal(base[mask], before[mask])


# ---- agreement: ISA levels, thread counts ---------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("width", [1, 13, 128, 4099])
def test_bitwise_across_levels_and_threads(dtype, width):
    gen = torch.Generator().manual_seed(3)
    n_rows = max(64, 200000 // width)
    shape = (n_rows, width)
    param = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = [make_grad(draw_indices("zipf", 3000, n_rows, gen), shape, dtype, gen)
             for _ in range(2)]
    results = []
    old_threads = torch.get_num_threads()
    try:
        for level in LEVELS:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                p, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
                with _ops.cpu_capability_override(level):
                    for step, g in enumerate(grads, start=1):
                        op_calls.sparse_adam_([p], [g], [m], [v], [step - 1], lr=0.01, beta1=0.9,
                                          beta2=0.999, eps=1e-8, weight_decay=0.0,
                                          maximize=False)
                results.append((level, threads, p, m, v))
    finally:
        torch.set_num_threads(old_threads)
    _, _, p0, m0, v0 = results[0]
    assert not torch.equal(p0, param)
    for level, threads, p, m, v in results[1:]:
        for a, b in ((p, p0), (m, m0), (v, v0)):
            assert torch.equal(a, b), (level, threads)


# ---- class level: parity with torch.optim.SparseAdam ----------------------------------------


class TwoTables(torch.nn.Module):
    def __init__(self, dtype, bag=False):
        super().__init__()
        self.users = torch.nn.Embedding(300, 16, sparse=True, dtype=dtype)
        if bag:
            self.items = torch.nn.EmbeddingBag(500, 16, mode="sum", sparse=True, dtype=dtype)
        else:
            self.items = torch.nn.Embedding(500, 16, sparse=True, dtype=dtype)
        self.bag = bag

    def forward(self, u, i):
        if self.bag:
            item = self.items(i.view(-1, 2))
            u = u[::2]
        else:
            item = self.items(i)
        return (self.users(u) * item).sum(-1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dname)
@pytest.mark.parametrize("bag", [False, True], ids=["embedding", "embeddingbag"])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("pinned", [True, False], ids=["ieee", "as_built"])
def test_parity_with_torch_200_steps(dtype, bag, maximize, pinned):
    """torch.optim.SparseAdam's own code vs pyoptim over 200 steps of a two-table model.

    pinned: torch runs under ieee_torch_mode (IEEE sqrt, position-order duplicate sums; see
    tests/reference_sparse_adam.py): bitwise equal. as_built: torch as installed (MKL VML sqrt,
    unstable-sort order), within the justified tolerance."""
    table = SPARSE_ADAM_VS_TORCH_IEEE if pinned else SPARSE_ADAM_VS_TORCH_MKL
    torch.manual_seed(0)
    model = TwoTables(dtype, bag)
    ours_model = copy.deepcopy(model)
    start = [p.detach().clone() for p in ours_model.parameters()]
    theirs = torch.optim.SparseAdam(model.parameters(), lr=0.01, maximize=maximize)
    ours = pyoptim.SparseAdam(ours_model.parameters(), lr=0.01, maximize=maximize)
    gen = torch.Generator().manual_seed(4)
    w = 1.0 / torch.arange(1, 501, dtype=torch.float64) ** 1.2
    for _ in range(200):
        u = torch.randint(0, 300, (64,), generator=gen)
        i = torch.multinomial(w, 64, replacement=True, generator=gen)
        y = torch.randn(64 if not bag else 32, generator=gen, dtype=dtype)
        for mdl, opt in ((model, theirs), (ours_model, ours)):
            opt.zero_grad()
            loss = ((mdl(u, i) - y) ** 2).mean()
            loss.backward()
            if pinned and opt is theirs:
                with ieee_torch_mode():
                    opt.step()
            else:
                opt.step()
    for (name, a), b in zip(ours_model.named_parameters(), model.parameters()):
        assert_close(a, b, dtype, table, msg=name)
        st_a, st_b = ours.state[a], theirs.state[b]
        assert st_a["step"] == st_b["step"] == 200 and isinstance(st_a["step"], int)
        assert_close(st_a["exp_avg"], st_b["exp_avg"], dtype, table, msg=name)
        assert_close(st_a["exp_avg_sq"], st_b["exp_avg_sq"], dtype, table, msg=name)
    for p, p0 in zip(ours_model.parameters(), start):
        assert not torch.equal(p.detach(), p0)


@pytest.mark.usefixtures("one_thread")
def test_empty_grad_counts_step():
    """A grad with no entries changes nothing but the step count, as in torch."""
    p_ours = torch.nn.Parameter(torch.randn(10, 4))
    p_theirs = torch.nn.Parameter(p_ours.detach().clone())
    ours = pyoptim.SparseAdam([p_ours])
    theirs = torch.optim.SparseAdam([p_theirs])
    p_before = p_ours.detach().clone()
    empty = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, 4),
                                    (10, 4))
    for p, opt in ((p_ours, ours), (p_theirs, theirs)):
        p.grad = empty.clone()
        opt.step()
        opt.step()
    assert ours.state[p_ours]["step"] == theirs.state[p_theirs]["step"] == 2
    assert torch.equal(p_ours, p_theirs)
    # the next real step uses step=3 for bias correction in both
    g = make_grad(torch.tensor([1, 1, 7]), (10, 4), torch.float32, torch.Generator())
    for p, opt in ((p_ours, ours), (p_theirs, theirs)):
        p.grad = g.clone()
        with ieee_torch_mode():
            opt.step()
    assert torch.equal(p_ours, p_theirs)
    assert not torch.equal(p_ours, p_before)


@pytest.mark.usefixtures("one_thread")
def test_lr_tensor_and_param_groups():
    torch.manual_seed(5)
    a, b = torch.randn(20, 3), torch.randn(30, 5)
    pa, pb = torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())
    qa, qb = torch.nn.Parameter(a.clone()), torch.nn.Parameter(b.clone())
    ours = pyoptim.SparseAdam([{"params": [pa]}, {"params": [pb], "lr": 0.3}],
                              lr=torch.tensor(0.05))
    theirs = torch.optim.SparseAdam([{"params": [qa]}, {"params": [qb], "lr": 0.3}],
                                    lr=torch.tensor(0.05))
    gen = torch.Generator().manual_seed(6)
    for _ in range(5):
        ga = make_grad(torch.randint(0, 20, (9,), generator=gen), (20, 3), torch.float32, gen)
        gb = make_grad(torch.randint(0, 30, (9,), generator=gen), (30, 5), torch.float32, gen)
        pa.grad, pb.grad, qa.grad, qb.grad = ga, gb, ga.clone(), gb.clone()
        ours.step()
        with ieee_torch_mode():
            theirs.step()
    assert torch.equal(pa, qa) and torch.equal(pb, qb)
    assert not torch.equal(pa.detach(), a)


# ---- state_dict both ways -------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("direction", ["torch_to_pyoptim", "pyoptim_to_torch"])
def test_state_dict_both_ways(direction):
    torch.manual_seed(7)
    model_a = torch.nn.Embedding(100, 8, sparse=True)
    model_b = copy.deepcopy(model_a)
    first, second = ((torch.optim.SparseAdam, pyoptim.SparseAdam)
                     if direction == "torch_to_pyoptim"
                     else (pyoptim.SparseAdam, torch.optim.SparseAdam))
    opt_a = first(model_a.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(8)

    def train(model, opt, n):
        g2 = torch.Generator().manual_seed(9)
        for _ in range(n):
            idx = torch.randint(0, 100, (40,), generator=g2)
            opt.zero_grad()
            model(idx).pow(2).sum().backward()
            with ieee_torch_mode():  # no effect on pyoptim; pins torch's sqrt and sum order
                opt.step()

    train(model_a, opt_a, 10)
    model_b.load_state_dict(model_a.state_dict())
    opt_b = second(model_b.parameters(), lr=0.02)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # else the two share state tensors
    sb = opt_b.state[model_b.weight]
    assert sb["step"] == 10 and isinstance(sb["step"], int)
    train(model_a, opt_a, 5)
    train(model_b, opt_b, 5)
    assert torch.equal(model_a.weight, model_b.weight)
    assert opt_b.state[model_b.weight]["step"] == 15
    del gen


@pytest.mark.parametrize("step", [3, 3.0, torch.tensor(3.0), torch.tensor(3)],
                         ids=["int", "float", "tensor", "int-tensor"])
def test_loaded_step_keeps_its_type(step):
    """A step count loaded as a float or a tensor counts on as torch.optim.SparseAdam's does
    (`state["step"] += 1`: the same type, a tensor in place), to the same value. (It became an
    int.)"""
    states = []
    for cls in (torch.optim.SparseAdam, pyoptim.SparseAdam):
        p = torch.nn.Parameter(torch.ones(4, 2))
        opt = cls([p], lr=0.1)
        p.grad = torch.ones(4, 2).to_sparse()
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0]["step"] = copy.deepcopy(step)
        opt.load_state_dict(sd)
        loaded = opt.state[p]["step"]
        opt.step()
        assert (opt.state[p]["step"] is loaded) == isinstance(step, torch.Tensor)
        states.append(opt.state[p]["step"])
    ref, got = states
    assert type(got) is type(ref) and got == ref == 4
    if isinstance(ref, torch.Tensor):
        assert got.dtype == ref.dtype


def test_param_groups_are_torchs_without_weight_decay():
    """weight_decay is pyoptim's opt-in: off (the default, or 0 given), the defaults and the
    state_dict's param groups have torch.optim.SparseAdam's keys and values, in its order."""
    for kwargs in (dict(), dict(weight_decay=0.0)):
        ours = pyoptim.SparseAdam([torch.nn.Parameter(torch.ones(3, 2))], lr=0.1, **kwargs)
        ref = torch.optim.SparseAdam([torch.nn.Parameter(torch.ones(3, 2))], lr=0.1)
        assert ours.defaults == ref.defaults
        assert list(ours.state_dict()["param_groups"][0].items()) == list(
            ref.state_dict()["param_groups"][0].items())


def test_weight_decay_only_touched_rows():
    """Opt-in decoupled weight decay: pyoptim.SparseAdam stepped with and without it, each
    against the reference (param and state, bitwise); the decay changes every touched row and no
    untouched one (those keep their pre-step values)."""
    torch.manual_seed(10)
    p0 = torch.randn(50, 6)
    idx = torch.tensor([3, 3, 10, 41])
    g = make_grad(idx, (50, 6), torch.float32, torch.Generator().manual_seed(11))
    stepped = {}
    for wd in (0.5, 0.0):
        p = torch.nn.Parameter(p0.clone())
        opt = pyoptim.SparseAdam([p], lr=0.1, weight_decay=wd)
        p.grad = g.clone()
        opt.step()
        q, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        sparse_adam_reference(q, g, m, v, 1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
                              weight_decay=wd)
        assert torch.equal(p.detach(), q), f"weight_decay={wd}"
        assert torch.equal(opt.state[p]["exp_avg"], m)
        assert torch.equal(opt.state[p]["exp_avg_sq"], v)
        group = opt.state_dict()["param_groups"][0]
        assert group.get("weight_decay") == (wd or None)  # off: not stored, torch's groups
        stepped[wd] = p.detach().clone()
    touched = torch.zeros(50, dtype=torch.bool)
    touched[idx] = True
    for wd, p in stepped.items():
        assert torch.equal(p[~touched], p0[~touched]), f"weight_decay={wd}: untouched rows moved"
        assert (p[touched] != p0[touched]).any(dim=1).all(), f"weight_decay={wd}: a row stayed"
    assert (stepped[0.5][touched] != stepped[0.0][touched]).any(dim=1).all()
    p1 = torch.nn.Parameter(p0.clone())
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        pyoptim.SparseAdam([p1], weight_decay=-1.0)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -2"):
        pyoptim.SparseAdam([{"params": [p1], "weight_decay": -2.0}])


# ---- errors: clear, and nothing changed ----------------------------------------------------


def test_constructor_errors_match_torch():
    p = torch.nn.Parameter(torch.randn(3, 2))
    for kwargs in ({"lr": 0.0}, {"lr": -1.0}, {"eps": 0.0}, {"betas": (1.0, 0.9)},
                   {"betas": (0.9, -0.1)}, {"lr": torch.tensor([1e-3, 1e-3])}):
        with pytest.raises(ValueError) as theirs:
            torch.optim.SparseAdam([p], **kwargs)
        with pytest.raises(ValueError) as ours:
            pyoptim.SparseAdam([p], **kwargs)
        assert str(ours.value) == str(theirs.value)
    sparse_p = torch.randn(3, 2).to_sparse().requires_grad_()
    complex_p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
    for params in ([p, sparse_p], [complex_p]):
        with pytest.raises(ValueError) as theirs:
            torch.optim.SparseAdam(params)
        with pytest.raises(ValueError) as ours:
            pyoptim.SparseAdam(params)
        assert str(ours.value) == str(theirs.value)
        assert "SparseAdam" in str(ours.value)


def bad_grad_cases():
    ok_idx = torch.tensor([[0, 2, 2]])
    vals = torch.randn(3, 4)

    def unsafe(i, v, size):
        return torch.sparse_coo_tensor(i, v, size, check_invariants=False)

    return {
        "out_of_range": (unsafe(torch.tensor([[0, 10]]), torch.randn(2, 4), (10, 4)), IndexError,
                         "out of range"),
        "negative": (unsafe(torch.tensor([[-1, 3]]), torch.randn(2, 4), (10, 4)), IndexError,
                     "out of range"),
        # (an index/value count mismatch cannot be built: torch's constructors all reject it;
        # the op checks it anyway)
        "shape_mismatch": (torch.sparse_coo_tensor(ok_idx, vals, (12, 4)), ValueError, "shape"),
        "width_mismatch": (torch.sparse_coo_tensor(ok_idx, torch.randn(3, 5), (10, 5)),
                           ValueError, "shape"),
        "dtype_mismatch": (torch.sparse_coo_tensor(ok_idx, vals.double(), (10, 4)), TypeError,
                           "dtype"),
        "dense": (torch.randn(10, 4), RuntimeError,
                  "SparseAdam does not support dense gradients, please consider Adam instead"),
    }


@pytest.mark.parametrize("case", list(bad_grad_cases()))
def test_bad_grad_changes_nothing(case):
    grad, exc, match = bad_grad_cases()[case]
    torch.manual_seed(12)
    good = torch.nn.Parameter(torch.randn(8, 3))
    bad = torch.nn.Parameter(torch.randn(10, 4))
    opt = pyoptim.SparseAdam([good, bad], lr=0.1)
    # one good step so both have state to protect
    good.grad = make_grad(torch.tensor([1, 2]), (8, 3), torch.float32, torch.Generator())
    bad.grad = make_grad(torch.tensor([0, 5]), (10, 4), torch.float32, torch.Generator())
    opt.step()
    snapshot = copy.deepcopy((good.detach(), bad.detach(), opt.state_dict()))
    # the good param comes first in the list: it must not be updated either
    good.grad = make_grad(torch.tensor([3, 3]), (8, 3), torch.float32, torch.Generator())
    try:
        bad.grad = grad
        via_class = True
    except RuntimeError:  # torch refuses .grad of another shape / dtype: call the op directly
        via_class = False
    with pytest.raises(exc, match=match):
        if via_class:
            opt.step()
        else:
            st_g, st_b = opt.state[good], opt.state[bad]
            op_calls.sparse_adam_([good, bad], [good.grad, grad],
                                  [st_g["exp_avg"], st_b["exp_avg"]],
                              [st_g["exp_avg_sq"], st_b["exp_avg_sq"]], [1, 1], lr=0.1,
                              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              maximize=False)
    assert torch.equal(good.detach(), snapshot[0]) and torch.equal(bad.detach(), snapshot[1])
    sd = opt.state_dict()
    for k, st_ in sd["state"].items():
        before = snapshot[2]["state"][k]
        assert st_["step"] == before["step"] == 1
        assert torch.equal(st_["exp_avg"], before["exp_avg"])
        assert torch.equal(st_["exp_avg_sq"], before["exp_avg_sq"])
    # and the same optimizer still works once the grad is fixed
    bad.grad = make_grad(torch.tensor([9]), (10, 4), torch.float32, torch.Generator())
    opt.step()
    assert opt.state[bad]["step"] == 2 and not torch.equal(bad.detach(), snapshot[1])


def test_bad_grad_on_first_step_creates_no_state():
    p = torch.nn.Parameter(torch.randn(10, 4))
    opt = pyoptim.SparseAdam([p])
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 11]]), torch.randn(2, 4), (10, 4),
                                     check_invariants=False)
    before = p.detach().clone()
    with pytest.raises(IndexError, match="out of range"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(p.detach(), before)


def test_op_rejects_aliasing_and_bad_lists():
    p = torch.randn(10, 4)
    g = make_grad(torch.tensor([1]), (10, 4), torch.float32, torch.Generator())
    m = torch.zeros_like(p)
    before = p.clone()
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False)
    with pytest.raises(ValueError, match="overlap"):
        op_calls.sparse_adam_([p], [g], [m], [m], [0], **kw)
    with pytest.raises(ValueError, match="steps"):
        op_calls.sparse_adam_([p], [g], [m], [torch.zeros_like(p)], [], **kw)
    with pytest.raises(ValueError, match="steps"):
        op_calls.sparse_adam_([p], [g], [m], [torch.zeros_like(p)], [-1], **kw)
    assert torch.equal(p, before) and torch.equal(m, torch.zeros_like(p))


# ---- bench workload smoke (no timing assertions) -------------------------------------------


def test_bench_workloads_run_tiny():
    from bench import __main__ as cli

    args = ["--quick", "--scale", str(1 / 256), "--repeat", "2", "--min-time", "0",
            "--no-latest", "--no-probe", "--filter", "^sparse_adam/"]
    res = cli.main(args, out=lambda line: None)
    names = [w["name"] for w in res["workloads"]]
    assert len(names) == 2
    assert any("uniform" in n for n in names) and any("zipf" in n for n in names)
    for w in res["workloads"]:
        assert {r["impl"] for r in w["rows"]} == {"pyoptim", "torch-sparseadam",
                                                   "torch-fused-dense", "row-probe"}
        assert all(r["median_ms"] > 0 for r in w["rows"])
