"""pyoptim.Adam / AdamW(lazy_sparse=True): sparse-gradient params stepped with SparseAdam's update
on the touched rows, in the same step as the dense params (Note [Lazy sparse Adam] in
pyoptim/adam.py, Note [Sparse params in a dense step] in pyoptim/_state.py).

The sparse params are checked bitwise against the SparseAdam reference (tests/
reference_sparse_adam.py, tolerance SPARSE_ADAM_VS_REFERENCE: exact); the dense params must step
exactly as the same optimizer without sparse params steps them (its kernel is checked against
the Adam reference in test_kernels.py).
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyoptim
from tests.helpers import assert_bitwise_equal, snapshot
from tests.reference_sparse_adam import ieee_torch_mode, sparse_adam_reference
from tests.tolerances import SPARSE_ADAM_VS_REFERENCE

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def sparse_grad(rows: int, width: int, idx: list[int], dtype, gen) -> torch.Tensor:
    """An uncoalesced COO grad as nn.Embedding(sparse=True) makes it (duplicates kept)."""
    values = torch.randn(len(idx), width, generator=gen).to(dtype)
    return torch.sparse_coo_tensor(torch.tensor([idx], dtype=torch.long), values, (rows, width))


def model(dtype, rows=40, width=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.Parameter(torch.randn(rows, width, generator=gen).to(dtype))
    dense = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in (5, 33)]
    return emb, dense


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from(DTYPES), cls=st.sampled_from(["Adam", "AdamW"]),
       maximize=st.booleans(), wd=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**16))
def test_sparse_rows_match_reference_dense_unchanged(dtype, cls, maximize, wd, seed):
    if cls == "Adam":
        wd = 0.0  # Adam's L2 decay has no lazy form (test_errors_leave_everything)
    assert SPARSE_ADAM_VS_REFERENCE[dtype] == (0.0, 0.0)
    gen = torch.Generator().manual_seed(seed)
    emb, dense = model(dtype, seed=seed)
    rows, width = emb.shape
    ref_emb = emb.detach().clone()
    ref_m, ref_v = torch.zeros_like(ref_emb), torch.zeros_like(ref_emb)
    dense_only = [p.detach().clone().requires_grad_() for p in dense]
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd, maximize=maximize)
    opt = getattr(pyoptim, cls)([emb, *dense], lazy_sparse=True, **kw)
    plain = getattr(pyoptim, cls)(dense_only, **kw)
    for step in range(1, 4):
        n = int(torch.randint(0, 60, (), generator=gen))  # 0: an empty grad
        idx = torch.randint(0, rows, (n,), generator=gen).tolist()
        emb.grad = sparse_grad(rows, width, idx, dtype, gen)
        for p, q in zip(dense, dense_only):
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            q.grad = p.grad.clone()
        opt.step()
        plain.step()
        sparse_adam_reference(ref_emb, emb.grad, ref_m, ref_v, step, lr=0.01, beta1=0.9,
                              beta2=0.99, eps=1e-6, maximize=maximize,
                              weight_decay=wd if cls == "AdamW" else 0.0)
        assert_bitwise_equal(emb, ref_emb, "sparse param")
        assert_bitwise_equal(opt.state[emb]["exp_avg"], ref_m, "exp_avg")
        assert_bitwise_equal(opt.state[emb]["exp_avg_sq"], ref_v, "exp_avg_sq")
        assert opt.state[emb]["step"].item() == step
        assert isinstance(opt.state[emb]["step"], torch.Tensor)  # torch.optim.Adam's layout
        for p, q in zip(dense, dense_only):
            assert_bitwise_equal(p, q, "dense param")
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert_bitwise_equal(opt.state[p][key], plain.state[q][key], key)


@pytest.mark.usefixtures("one_thread")
def test_tensor_lr_against_torch_sparse_adam():
    """A Tensor lr: the step size is computed in its dtype, as torch.optim.SparseAdam does."""
    emb, dense = model(torch.float32)
    q = torch.nn.Parameter(emb.detach().clone())
    opt = pyoptim.Adam([emb, *dense], lr=torch.tensor(0.05), lazy_sparse=True)
    theirs = torch.optim.SparseAdam([q], lr=torch.tensor(0.05))
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        g = sparse_grad(*emb.shape, torch.randint(0, 40, (30,), generator=gen).tolist(),
                        torch.float32, gen)
        emb.grad, q.grad = g, g.clone()
        for p in dense:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        with ieee_torch_mode():
            theirs.step()
    assert_bitwise_equal(emb, q)


def test_off_by_default_torch_error_nothing_changed():
    emb, dense = model(torch.float32)
    emb.grad = sparse_grad(*emb.shape, [1, 2], torch.float32, torch.Generator())
    for p in dense:
        p.grad = torch.ones_like(p)
    before = snapshot([emb, *dense])
    for cls in (pyoptim.Adam, pyoptim.AdamW):
        opt = cls([emb, *dense])
        assert "lazy_sparse" not in opt.param_groups[0]  # torch's param groups, exactly
        with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
            opt.step()
        assert len(opt.state) == 0
    assert_bitwise_equal(snapshot([emb, *dense]), before)


@pytest.mark.parametrize("cls,kw,match", [
    ("Adam", dict(amsgrad=True), "amsgrad does not support sparse gradients"),
    ("AdamW", dict(amsgrad=True), "amsgrad does not support sparse gradients"),
    ("Adam", dict(weight_decay=0.1), "weight_decay \\(L2\\) is not compatible"),
])
def test_errors_leave_everything(cls, kw, match):
    emb, dense = model(torch.float32)
    emb.grad = sparse_grad(*emb.shape, [3, 3], torch.float32, torch.Generator())
    for p in dense:
        p.grad = torch.ones_like(p)
    opt = getattr(pyoptim, cls)([*dense, emb], lazy_sparse=True, **kw)
    before = snapshot([emb, *dense])
    with pytest.raises(RuntimeError, match=match):
        opt.step()
    assert len(opt.state) == 0  # the dense params' state made before the error is gone too
    assert_bitwise_equal(snapshot([emb, *dense]), before)


def test_bad_sparse_grad_all_or_nothing():
    """An out-of-range index raises before the dense params (or any count) change."""
    emb, dense = model(torch.float32)
    gen = torch.Generator()
    opt = pyoptim.AdamW([emb, *dense], lazy_sparse=True)
    emb.grad = sparse_grad(*emb.shape, [0, 1], torch.float32, gen)
    for p in dense:
        p.grad = torch.ones_like(p)
    opt.step()
    state_before = copy.deepcopy(opt.state_dict())
    before = snapshot([emb, *dense])
    bad = sparse_grad(*emb.shape, [0, 1], torch.float32, gen)
    bad._indices()[0, 1] = emb.shape[0]  # out of range
    emb.grad = bad
    with pytest.raises(IndexError):
        opt.step()
    assert_bitwise_equal(snapshot([emb, *dense]), before)
    assert_bitwise_equal(snapshot(opt.state_dict()["state"]), snapshot(state_before["state"]))


def test_grad_layout_changes_and_state_reset():
    """A param whose grad turns dense (or sparse) between steps, and a reset state dict: the
    step follows what the grads and the state are now."""
    emb, dense = model(torch.float64)
    gen = torch.Generator().manual_seed(1)
    opt = pyoptim.AdamW([emb, *dense], lazy_sparse=True, weight_decay=0.0)
    ref = pyoptim.AdamW([q := emb.detach().clone().requires_grad_()], weight_decay=0.0)
    ref_sparse = pyoptim.SparseAdam([r := emb.detach().clone().requires_grad_()])
    for p in dense:
        p.grad = torch.ones_like(p)
    g = sparse_grad(*emb.shape, [4, 5, 4], torch.float64, gen)
    emb.grad, r.grad = g, g
    opt.step()
    ref_sparse.step()
    assert_bitwise_equal(emb, r)
    # the same param with a dense grad: Adam's fused update, from the state the sparse step made
    q.data.copy_(emb.detach())
    ref.state[q].update(copy.deepcopy(opt.state[emb]))
    d = torch.randn(emb.shape, generator=gen, dtype=torch.float64)
    emb.grad, q.grad = d, d.clone()
    opt.step()
    ref.step()
    assert_bitwise_equal(emb, q)
    assert opt.state[emb]["step"].item() == 2
    # back to sparse, after a reset of its state: state made again, as torch makes it
    opt.state[emb] = {}
    r.data.copy_(emb.detach())
    ref_sparse.state.clear()
    g = sparse_grad(*emb.shape, [7], torch.float64, gen)
    emb.grad, r.grad = g, g
    opt.step()
    ref_sparse.step()
    assert_bitwise_equal(emb, r)
    assert opt.state[emb]["step"].item() == 1


def test_flag_turned_off_between_steps_raises_torchs_error():
    emb, dense = model(torch.float32)
    opt = pyoptim.Adam([emb, *dense], lazy_sparse=True)
    emb.grad = sparse_grad(*emb.shape, [1], torch.float32, torch.Generator())
    opt.step()
    opt.param_groups[0]["lazy_sparse"] = False
    before = snapshot([emb, *dense])
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        opt.step()
    assert_bitwise_equal(snapshot([emb, *dense]), before)


def test_per_group_flag_and_state_dict_both_ways():
    emb, dense = model(torch.float32)
    gen = torch.Generator()
    opt = pyoptim.AdamW([{"params": dense}, {"params": [emb], "lazy_sparse": True}], lr=0.01)
    assert "lazy_sparse" not in opt.param_groups[0]
    for _ in range(2):
        emb.grad = sparse_grad(*emb.shape, [1, 9, 9], torch.float32, gen)
        for p in dense:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq"}
    t = torch.optim.AdamW([{"params": dense}, {"params": [emb]}], lr=0.01)
    t.load_state_dict(sd)  # torch.optim loads it (the extra group key is kept, unread)
    back = pyoptim.AdamW([{"params": dense}, {"params": [emb]}], lr=0.01)
    back.load_state_dict(t.state_dict())
    assert back.param_groups[1]["lazy_sparse"] is True
    emb.grad = sparse_grad(*emb.shape, [2], torch.float32, gen)
    back.step()
    assert back.state[emb]["step"].item() == 3


def test_grad_scaler_found_inf_skips_and_scale_raises():
    emb, dense = model(torch.float32)
    opt = pyoptim.Adam([emb, *dense], lazy_sparse=True)
    emb.grad = sparse_grad(*emb.shape, [1], torch.float32, torch.Generator())
    for p in dense:
        p.grad = torch.ones_like(p)
    opt.step()
    before = snapshot([emb, *dense])
    counts = [opt.state[p]["step"].item() for p in (emb, *dense)]
    opt.found_inf = torch.ones(())
    opt.step()  # skipped: nothing moves, no count advances
    assert_bitwise_equal(snapshot([emb, *dense]), before)
    assert [opt.state[p]["step"].item() for p in (emb, *dense)] == counts
    opt.found_inf = torch.zeros(())
    opt.grad_scale = torch.full((), 2.0)
    with pytest.raises(RuntimeError, match="unscale"):
        opt.step()
    assert_bitwise_equal(snapshot([emb, *dense]), before)


def test_signature_is_torch_plus_pyoptim_keywords():
    for cls, base in ((pyoptim.Adam, torch.optim.Adam), (pyoptim.AdamW, torch.optim.AdamW)):
        ours = dict(inspect.signature(cls.__init__).parameters)
        for extra in ("lazy_sparse", "master_weights", "stochastic_rounding", "state_dtype",
                      "kahan_summation"):
            assert ours.pop(extra).kind is inspect.Parameter.KEYWORD_ONLY
        theirs = inspect.signature(base.__init__).parameters
        assert list(ours) == list(theirs)
        assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]
    with pytest.raises(ValueError, match="lazy_sparse"):
        pyoptim.Adam([torch.nn.Parameter(torch.ones(2))], lazy_sparse="yes")
