"""torch.compile of pyoptim's steps (Note [Compiled step] in pyoptim/_compiled.py).

  * opt.step compiled with fullgraph=True (an error on any graph break inside step), for every
    dense optimizer, several param groups, a param without a grad, amsgrad in one group only, a
    Tensor lr: BITWISE equal to eager steps, params and state (the same ops run on the same
    tensors; only the Python frame around them differs);
  * SGD with momentum, whose first compiled step creates its buffers in the graph (the issue's
    crash, "'SGD' object has no attribute '_pyoptim_caches'", after the params were written):
    bitwise equal to eager, with exactly one recompile (the new buffers), as torch.optim.SGD;
  * every mixed-precision mode (master weights, stochastic rounding, Kahan, bf16 and 8-bit
    states; Adam and SGD), and Adam with all its optional state lists at once: fullgraph, bitwise
    equal to eager (state_dtype="8bit" crashed at trace time);
  * a whole training step (forward, backward, step, zero_grad) compiled: the only graph breaks
    are outside pyoptim (backward and torch's zero_grad, as with torch.optim), and with Inductor
    its result equals that of the same compiled function with an eager step, bit for bit;
  * a Tensor lr driven by an LR scheduler: no recompiles, eager's numbers;
  * sparse grads (SparseAdam, Adagrad, RowWiseAdagrad) and complex params step eagerly under
    compile (one graph break), with eager's numbers; a step over more params than
    pyoptim._compiled.CHUNK makes several op calls, with eager's numbers.

Compiling is slow on 2 cores, so most tests use the aot_eager backend (Dynamo, AOT autograd and
functionalization of the ops, no code generation), models are tiny and steps few; the Inductor
tests are the ones named `_inductor`. The whole file takes about a minute.
"""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch
from helpers import any_changed, assert_bitwise_equal, snapshot

import pyoptim
import pyoptim._compiled

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PYOPTIM_DIR = str(pathlib.Path(pyoptim.__file__).parent)
STEPS = 3


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)


def _groups(model: torch.nn.Module, second: dict) -> list[dict]:
    """Two groups: the first layer with the defaults, the second with `second`."""
    first, last = list(model[0].parameters()), list(model[2].parameters())
    return [{"params": first}, {"params": last, **second}]


# name -> (class, constructor kwargs, second group's overrides)
CONFIGS = {
    "adam": (pyoptim.Adam, dict(lr=1e-2), dict(lr=3e-2, amsgrad=True, weight_decay=0.1)),
    "adamw": (pyoptim.AdamW, dict(lr=1e-2, weight_decay=0.05), dict(maximize=True)),
    "adam-tensor-lr": (pyoptim.Adam, dict(lr=torch.tensor(1e-2)), dict(betas=(0.8, 0.99))),
    "sgd": (pyoptim.SGD, dict(lr=0.1), dict(lr=0.05, weight_decay=0.01)),
    "sgd-momentum": (pyoptim.SGD, dict(lr=0.1, momentum=0.9),
                     dict(nesterov=True, weight_decay=0.01)),
    "sgd-dampening-mixed": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5),
                            dict(momentum=0.0)),
    "adamax": (pyoptim.Adamax, dict(lr=1e-2), dict(lr=2e-2, weight_decay=0.1, maximize=True)),
    "adagrad": (pyoptim.Adagrad, dict(lr=1e-2, lr_decay=0.1),
                dict(lr=2e-2, weight_decay=0.1, maximize=True)),
}


# The mixed-precision modes (Note [Master weights and stochastic rounding], Note
# [Reduced-precision optimizer states]): name -> (class, kwargs, second group's overrides, param
# dtype). Each has its own state lists (masters, seeds, scales, compensations); "sgd-*" ones
# create their buffer, in the mode's dtype, in the first step's graph.
MIXED = {
    "adamw-master": (pyoptim.AdamW, dict(lr=1e-2, master_weights=True), dict(amsgrad=True),
                     torch.bfloat16),
    "adam-master-fp16": (pyoptim.Adam, dict(lr=1e-2, master_weights=True),
                         dict(weight_decay=0.1), torch.float16),
    "adamw-sr": (pyoptim.AdamW, dict(lr=1e-2, stochastic_rounding=True), dict(maximize=True),
                 torch.bfloat16),
    "adamw-kahan": (pyoptim.AdamW, dict(lr=1e-2, kahan_summation=True), dict(amsgrad=True),
                    torch.bfloat16),
    "adamw-bf16state": (pyoptim.AdamW, dict(lr=1e-2, state_dtype=torch.bfloat16),
                        dict(state_dtype=None, amsgrad=True), torch.float32),
    "adam-8bit": (pyoptim.Adam, dict(lr=1e-2, state_dtype="8bit"), dict(weight_decay=0.1),
                  torch.float32),
    "sgd-master": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, master_weights=True),
                   dict(nesterov=True), torch.bfloat16),
    "sgd-sr": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, stochastic_rounding=True),
               dict(stochastic_rounding=False, momentum=0.0), torch.bfloat16),
    "sgd-bf16state": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, state_dtype=torch.bfloat16),
                      dict(dampening=0.5), torch.float32),
    "sgd-8bit": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, state_dtype="8bit"),
                 dict(weight_decay=0.01), torch.float32),
    # a group with momentum next to one without (whose compensation is its only state: the
    # buffers become an optional state list), and Kahan without momentum alone
    "sgd-kahan": (pyoptim.SGD, dict(lr=0.1, momentum=0.9, kahan_summation=True),
                  dict(momentum=0.0, weight_decay=0.01), torch.bfloat16),
    "sgd-kahan-plain-fp16": (pyoptim.SGD, dict(lr=0.1, kahan_summation=True),
                             dict(maximize=True), torch.float16),
}


def _make(name: str, seed: int = 0):
    cls, kwargs, second, *dtype = CONFIGS[name] if name in CONFIGS else MIXED[name]
    model = _model(seed).to(*dtype)
    kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    return model, cls(_groups(model, second), **kwargs)


def _set_grads(model: torch.nn.Module, step: int, skip_last: bool = False) -> None:
    """Deterministic grads; with skip_last the last bias has none (it is not stepped)."""
    g = torch.Generator().manual_seed(100 + step)
    params = list(model.parameters())
    for k, p in enumerate(params):
        p.grad = None if skip_last and k == len(params) - 1 else torch.randn(
            p.shape, generator=g).to(p.dtype)


def _run(name: str, step_fn_of) -> tuple[list, dict]:
    model, opt = _make(name)
    step = step_fn_of(opt)
    torch.manual_seed(7)  # the stochastic modes draw their seeds at the first step
    for k in range(STEPS):
        _set_grads(model, k, skip_last=k == 1)
        step()
    return snapshot(list(model.parameters())), snapshot(opt.state_dict()["state"])


def _frames_in_pyoptim(explanation) -> list[str]:
    out = []
    for reason in explanation.break_reasons:
        for frame in reason.user_stack or ():
            if frame.filename.startswith(PYOPTIM_DIR):
                out.append(f"{frame.filename}:{frame.lineno}: {reason.reason.splitlines()[0]}")
    return out


@pytest.mark.parametrize("name", [*CONFIGS, *MIXED])
def test_compiled_step_fullgraph_equals_eager(name):
    """Every dense optimizer and every mixed-precision mode (MIXED: masters, seeds, scales,
    compensations; state_dtype="8bit" raised AssertionError at trace time, more state lists
    than the traced step passed) traces with no graph break and gives eager's bits."""
    eager = _run(name, lambda opt: opt.step)
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = _run(name, lambda opt: torch.compile(opt.step, backend="aot_eager",
                                                    fullgraph=True))
    assert_bitwise_equal(compiled, eager, name)
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("then", ["compiled", "eager"])
def test_views_held_after_a_trace_follow_the_state(then):
    """Note [Held state]: a traced step holds views of the state tensors its graph steps. After
    load_state_dict gives the optimizer new state tensors, the next step lets the old ones go:
    a compiled one (the recompile's trace) holds views of the new tensors only, an eager one none
    (its Plan holds its own). Either steps the loaded state: the same numbers as an eager
    optimizer that loaded it. (Dynamo's cache entries hold the tensors their graphs were traced
    on, as for torch.optim's compiled steps, until torch._dynamo.reset().)"""
    model, opt = _make("adamw")
    ref_model, ref = _make("adamw")
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    for k in range(2):
        _set_grads(model, k)
        step()

    def state_ids() -> set[int]:
        return {id(t) for s in opt.state.values() for t in s.values()}

    def held_bases() -> set[int] | None:
        held = opt.__dict__.get(pyoptim._compiled.TRACED_HELD)
        return None if held is None else {id(v._base) for v in held}

    assert held_bases() == state_ids()
    _set_grads(ref_model, 0)
    ref.step()
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # (a state_dict shares its tensors)
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.copy_(q)
    _set_grads(model, 5)
    _set_grads(ref_model, 5)
    (step if then == "compiled" else opt.step)()
    ref.step()
    assert held_bases() == (state_ids() if then == "compiled" else None)
    assert_bitwise_equal(snapshot(list(model.parameters())), snapshot(list(ref_model.parameters())))
    assert_bitwise_equal(snapshot(opt.state_dict()["state"]), snapshot(ref.state_dict()["state"]))


def test_adam_every_optional_state_list_compiles():
    """Groups with each of adam_'s optional state lists at once (amsgrad, master weights, seeds,
    the two 8-bit scales, Kahan): pyoptim._compiled.STATE_LISTS lists, eager's bits."""
    modes = [dict(amsgrad=True), dict(master_weights=True), dict(stochastic_rounding=True),
             dict(state_dtype="8bit"), dict(kahan_summation=True)]
    dtypes = [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32, torch.float16]

    def run(compiled: bool):
        torch.manual_seed(0)
        params = [torch.randn(37, 3, dtype=dt) for dt in dtypes]
        opt = pyoptim.AdamW([dict(params=[p], **m) for p, m in zip(params, modes)], lr=1e-2)
        step = torch.compile(opt.step, backend="aot_eager", fullgraph=True) \
            if compiled else opt.step
        torch.manual_seed(7)
        for k in range(STEPS):
            g = torch.Generator().manual_seed(100 + k)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            step()
        return snapshot(params), snapshot(opt.state_dict()["state"])

    assert_bitwise_equal(run(True), run(False))


@pytest.mark.parametrize("name", ["adam-8bit", "sgd-sr"])
def test_mixed_precision_modes_inductor(name):
    """Inductor calls the op in place on the state it reads and writes (8-bit codes and scales;
    SGD's seed, which each step advances): eager's bits."""
    eager = _run(name, lambda opt: opt.step)
    compiled = _run(name, lambda opt: torch.compile(opt.step, fullgraph=True))
    assert_bitwise_equal(compiled, eager, name)


@pytest.mark.parametrize("name", ["adam", "sgd-momentum", "sgd-dampening-mixed", "adamax",
                                  "adagrad"])
def test_chunked_op_calls_equal_eager(name, monkeypatch):
    """Note [Op calls of a compiled step]: with more params than CHUNK the traced step calls the
    op in chunks (all validated first), across param groups and around a param without a grad:
    still eager's bits."""
    monkeypatch.setattr(pyoptim._compiled, "CHUNK", 1)
    eager = _run(name, lambda opt: opt.step)
    compiled = _run(name, lambda opt: torch.compile(opt.step, backend="aot_eager",
                                                    fullgraph=True))
    assert_bitwise_equal(compiled, eager, name)


def test_complex_param_steps_eagerly_under_compile():
    def run(compile_step: bool):
        torch.manual_seed(3)
        p = torch.nn.Parameter(torch.randn(5, dtype=torch.complex64))
        q = torch.nn.Parameter(torch.randn(4))
        opt = pyoptim.Adam([p, q], lr=1e-2)
        step = torch.compile(opt.step, backend="aot_eager") if compile_step else opt.step
        for k in range(STEPS):
            g = torch.Generator().manual_seed(k)
            p.grad = torch.randn(5, dtype=torch.complex64, generator=g)
            q.grad = torch.randn(4, generator=g)
            step()
        return snapshot([p, q]), snapshot(opt.state_dict()["state"])

    assert_bitwise_equal(run(True), run(False))


def test_sgd_momentum_compiled_first_step_regression():
    """The issue's crash: compiled SGD(momentum=0.9) raised AttributeError ('_pyoptim_caches')
    on its first step after writing the params. Now the first step creates the buffers in the
    graph (buf = grad), and the next call recompiles once with them as state."""
    model, opt = _make("sgd-momentum")
    ref_model, ref = _make("sgd-momentum")
    counters = torch._dynamo.utils.counters
    counters.clear()
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    for k in range(STEPS):
        _set_grads(model, k)
        _set_grads(ref_model, k)
        step()
        ref.step()
        assert_bitwise_equal(snapshot(list(model.parameters())),
                             snapshot(list(ref_model.parameters())), f"step {k}")
        assert_bitwise_equal(opt.state_dict()["state"], ref.state_dict()["state"], f"step {k}")
    assert all(isinstance(s["momentum_buffer"], torch.Tensor) for s in opt.state.values())
    assert counters["stats"]["unique_graphs"] == 2  # first step, then with the buffers


def _train_fn(model, opt, x, y, step=None):
    step = step or opt.step

    def train():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        step()
        opt.zero_grad()
        return loss

    return train


@pytest.mark.parametrize("name", ["adamw", "sgd-momentum", "adamax", "adagrad"])
def test_training_step_breaks_only_outside_pyoptim(name):
    model, opt = _make(name)
    x, y = _data()
    train = _train_fn(model, opt, x, y)
    explanation = torch._dynamo.explain(train)()
    assert _frames_in_pyoptim(explanation) == []
    # the breaks torch.optim has too: Tensor.backward() and Optimizer.zero_grad
    assert explanation.graph_break_count <= 2, [r.reason for r in explanation.break_reasons]


@pytest.mark.parametrize("name", ["adamw", "sgd-momentum"])
def test_training_step_inductor(name):
    """The whole step compiled by Inductor, against the same compiled function whose opt.step
    runs eagerly (torch.compiler.disable): the forward and backward graphs are the same, so the
    trained params must be the same bits."""
    x, y = _data()
    results = []
    for eager_step in (False, True):
        model, opt = _make(name)
        step = torch.compiler.disable(opt.step) if eager_step else None
        train = torch.compile(_train_fn(model, opt, x, y, step))
        for _ in range(STEPS):
            train()
        results.append((snapshot(list(model.parameters())), snapshot(opt.state_dict()["state"])))
        torch._dynamo.reset()
    assert any_changed(list(_make(name)[0].parameters()), results[0][0])  # the steps stepped
    assert_bitwise_equal(results[0], results[1], name)


def test_tensor_lr_scheduler_no_recompile():
    """A Tensor lr moved by an LR scheduler between compiled steps: read by the op on the
    host from the tensor, so the graph stays valid (a float lr is a constant of the graph)."""
    def run(compiled: bool):
        model = _model()
        opt = pyoptim.AdamW(model.parameters(), lr=torch.tensor(0.02), weight_decay=0.1)
        # compiled before the scheduler wraps opt.step (in lr_scheduler.py, which Dynamo skips)
        step = torch.compile(opt.step, backend="aot_eager", fullgraph=True) \
            if compiled else opt.step
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for k in range(STEPS + 1):
            _set_grads(model, k)
            step()
            sched.step()
        return snapshot(list(model.parameters())), snapshot(opt.state_dict()["state"])

    eager = run(False)
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = run(True)
    assert_bitwise_equal(compiled, eager)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("cls", [pyoptim.SparseAdam, pyoptim.Adagrad, pyoptim.RowWiseAdagrad],
                         ids=lambda c: c.__name__)
def test_sparse_grads_step_eagerly_under_compile(cls):
    def run(compiled: bool):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20, 4, sparse=True)
        opt = cls(emb.parameters(), lr=1e-2)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for k in range(STEPS):
            emb.weight.grad = None
            emb(torch.tensor([1, 3, 3, 7 + k])).sum().backward()
            step()
        return snapshot(list(emb.parameters())), snapshot(opt.state_dict()["state"])

    assert_bitwise_equal(run(True), run(False))


@pytest.mark.parametrize("cls, kwargs", [
    (pyoptim.Adam, dict(betas=(torch.tensor(0.8), torch.tensor(0.9)))),
    (pyoptim.AdamW, dict(eps=torch.tensor(1e-3), weight_decay=torch.tensor(0.1))),
    (pyoptim.Adamax, dict(betas=(torch.tensor(0.8), torch.tensor(0.9)))),
    (pyoptim.SGD, dict(momentum=torch.tensor(0.5))),
    (pyoptim.Adagrad, dict(lr_decay=torch.tensor(0.1))),
], ids=["adam-betas", "adamw-eps-wd", "adamax-betas", "sgd-momentum", "adagrad-lr-decay"])
def test_tensor_hyper_parameters_step_eagerly_under_compile(cls, kwargs):
    """A Tensor hyper-parameter other than lr (torch's steps take them) steps eagerly under
    compile, with eager's bits: the traced op call got the tensors in its float lists and
    raised at trace time (TorchRuntimeError; SGD: Dynamo's AssertionError on a Tensor
    momentum in the step's layout)."""
    def run(compiled: bool):
        model = _model()
        opt = cls(model.parameters(), lr=1e-2, **kwargs)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for k in range(STEPS):
            _set_grads(model, k)
            step()
        return snapshot(list(model.parameters())), snapshot(opt.state_dict()["state"])

    assert_bitwise_equal(run(True), run(False))
