"""Smoke tests for `python -m bench` (bench/): the harness runs in quick mode on tiny sizes,
in-process, and produces its result rows. No timing assertions. The run itself takes well
under a second; the first torch.optim constructor in a process imports torch._dynamo (~3 s),
which any test building a torch optimizer pays once."""

import json

import pytest
import torch

import pyoptim  # noqa: F401  (registers torch.ops.pyoptim.*)
from bench import __main__ as cli
from bench import bytes as nbytes
from bench import harness

TINY = ["--quick", "--scale", str(1 / 65536), "--repeat", "2", "--min-time", "0", "--no-latest"]


def test_quick_run_produces_rows(tmp_path):
    path = tmp_path / "r.json"
    lines = []
    # the two single-tensor workloads: the many-tensor ones cost seconds in torch's for-loop
    args = TINY + ["--filter", "^adam/(fp32|bf16)-1x", "--json", str(path)]
    res = cli.main(args, out=lines.append)
    names = [w["name"] for w in res["workloads"]]
    assert len(names) == 2 and all(n.startswith("adam/") for n in names)
    for w in res["workloads"]:
        impls = {r["impl"] for r in w["rows"]}
        assert impls == {"torch-forloop", "torch-foreach", "torch-fused", "pyoptim"}
        for r in w["rows"]:
            assert r["n"] >= 2 and r["median_ms"] > 0 and r["gbps"] > 0
            assert r["ratio"] > 0 and r["pct_probe"] > 0
        assert [r["ratio"] for r in w["rows"] if r["impl"] == "pyoptim"] == [1.0]
    assert set(res["probes"]) == {"stream-4r3w", "torch-copy-1r1w"}
    assert res["machine"]["threads"] == torch.get_num_threads()
    assert json.loads(path.read_text())["workloads"][0]["name"] == names[0]
    assert any(line.startswith("adam/fp32-1x") for line in lines)

    # --compare OLD --against NEW prints one line per (workload, impl) found in both
    out = []
    cli.main(["--compare", str(path), "--against", str(path)], out=out.append)
    rows = [line for line in "\n".join(out).splitlines() if "pyoptim" in line]
    assert len(rows) == 2 and all("1.00x" in line for line in rows)


def test_isa_all_adds_every_other_level():
    """--isa all: each pyoptim impl also runs at every other level this CPU runs, and that
    level's kernel table is the one called."""
    from pyoptim import _ops

    others = [lv for lv in _ops.available_cpu_capabilities() if lv != _ops.cpu_capability()]
    if not others:
        pytest.skip("this CPU runs one level only")
    seen = []
    real = cli._at_level

    def spy(setup, level):  # records which kernel table each @level step ran on
        def recording():
            step = setup()

            def run():
                step()
                seen.append((level, _ops.kernel_table_isa()))
            return run
        return real(recording, level)

    cli._at_level = spy
    try:
        res = cli.main(TINY + ["--filter", "^sgd/fp32-1x", "--isa", "all"], out=lambda _: None)
    finally:
        cli._at_level = real
    impls = {r["impl"] for r in res["workloads"][0]["rows"]}
    assert {f"pyoptim@{lv}" for lv in others} <= impls and "pyoptim" in impls
    assert {lv for lv, _ in seen} == set(others) and all(lv == isa for lv, isa in seen)


def test_discover_finds_adam_and_adamw():
    cfg = harness.BenchConfig(scale=1 / 65536)
    found = harness.discover(cfg)  # builds Workloads only: setup() allocates when run
    for group in ("adam", "adamw"):
        ws = [w for w in found if w.group == group]
        assert len(ws) == 4, [w.name for w in ws]
        assert all(set(w.impls) >= {"torch-forloop", "torch-foreach", "torch-fused"} for w in ws)
        assert all(w.baseline in w.impls and w.bytes_per_step > 0 for w in ws)


def test_stream_probe_op_writes_its_outputs():
    x, y, z, g = (torch.randn(1000) for _ in range(4))
    x0, y0, z0, g0 = x.clone(), y.clone(), z.clone(), g.clone()
    torch.ops.pyoptim._stream_probe_(x, y, z, g)
    assert torch.equal(x, x0 * 0.5 + g0) and torch.equal(y, y0 * 0.5 + g0)
    assert torch.equal(z, z0 * 0.5 - g0) and torch.equal(g, g0)


def test_stream_probe_op_rejects_aliased_arrays_before_writing():
    x, y, g = torch.randn(64), torch.randn(64), torch.randn(64)
    x0, y0 = x.clone(), y.clone()
    with pytest.raises(ValueError, match="must not share memory"):
        torch.ops.pyoptim._stream_probe_(x, y, g, g)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def _row_probe_reference(tables, g, rows):
    """What _row_probe_ computes, in torch ops: each run of equal rows summed left to right."""
    out = [t.clone() for t in tables]
    k = 0
    while k < rows.numel():
        r, acc = int(rows[k]), g[k].clone()
        k += 1
        while k < rows.numel() and int(rows[k]) == r:
            acc += g[k]
            k += 1
        for t, sign in zip(out, (1, 1, -1)):
            t[r] = t[r] * 0.5 + sign * acc
    return out


@pytest.mark.parametrize("n_tables", [1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_probe_op_writes_the_touched_rows(n_tables, threads):
    gen = torch.Generator().manual_seed(n_tables)
    rows = torch.randint(0, 50, (300,), generator=gen).sort().values  # many runs of duplicates
    tables = [torch.randn(50, 19, generator=gen) for _ in range(n_tables)]
    g = torch.randn(300, 19, generator=gen)
    expected = _row_probe_reference(tables, g, rows)
    args = tables + [None] * (3 - n_tables)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.ops.pyoptim._row_probe_(*args, g, rows)
    finally:
        torch.set_num_threads(prev)
    for t, e in zip(tables, expected):
        assert torch.equal(t, e)


def test_row_probe_op_rejects_bad_rows_before_writing():
    x, g = torch.randn(8, 4), torch.randn(3, 4)
    x0 = x.clone()
    for rows in (torch.tensor([0, 2, 1]), torch.tensor([0, 1, 8]), torch.tensor([-1, 0, 1])):
        with pytest.raises(IndexError, match="ascending row indices"):
            torch.ops.pyoptim._row_probe_(x, None, None, g, rows)
    with pytest.raises(ValueError, match="must not share memory"):
        torch.ops.pyoptim._row_probe_(x, x, None, g, torch.tensor([0, 1, 2]))
    assert torch.equal(x, x0)


def test_bytes_model():
    assert nbytes.adam_bytes_per_elem(torch.float32) == 28
    assert nbytes.adam_bytes_per_elem(torch.float32, amsgrad=True) == 36
    assert nbytes.adam_bytes_per_elem(torch.bfloat16) == 14
    assert nbytes.sgd_bytes_per_elem(torch.float32, momentum=True) == 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_gpu_exits_with_message():
    with pytest.raises(SystemExit, match="--device cuda"):
        cli.main(["--device", "cuda", "--no-latest"])


def test_sparse_bytes_model():
    # 10 unique rows of width 128 touched by 20 value rows (duplicates included), int64 indices
    assert nbytes.sparse_adam_bytes(10, 20, 128) == 6 * 4 * 10 * 128 + 4 * 20 * 128 + 8 * 20
    assert nbytes.sparse_sgd_bytes(10, 20, 128) == 2 * 4 * 10 * 128 + 4 * 20 * 128 + 8 * 20
    assert nbytes.sparse_sgd_bytes(10, 20, 128, momentum=True) == (
        4 * 4 * 10 * 128 + 4 * 20 * 128 + 8 * 20
    )
    assert nbytes.sparse_adagrad_bytes(10, 20, 128) == 4 * 4 * 10 * 128 + 4 * 20 * 128 + 8 * 20
    # row-wise: p read and written, one float32 sum per row read and written
    assert nbytes.rowwise_adagrad_bytes(10, 20, 128) == (
        2 * 4 * 10 * 128 + 2 * 4 * 10 + 4 * 20 * 128 + 8 * 20
    )


def test_sparse_sgd_bytes_count_the_exact_unique_rows():
    from bench import workloads_sgd

    cfg = harness.BenchConfig(scale=1 / 64)
    rows, lookups = cfg.n(2**20, minimum=64), cfg.n(65536, minimum=64)
    found = [w for w in harness.discover(cfg) if w.name.startswith("sgd-sparse/")]
    assert len(found) == 2
    for w in found:
        idx = workloads_sgd.sparse_indices(rows, lookups, zipf="zipf" in w.name)
        unique = int(idx.unique().numel())
        assert 0 < unique < lookups  # duplicates exist, so an estimate would be off
        assert w.bytes_per_step == nbytes.sparse_sgd_bytes(unique, lookups, 128)
        assert f"({unique} unique rows)" in w.description


def test_sparse_curves_quick_run_and_plot(tmp_path):
    from bench import sparse_curves

    path, png = tmp_path / "c.json", tmp_path / "c.png"
    args = ["--quick", "--scale", str(1 / 1024), "--only", "sgd", "--dist", "zipf",
            "--min-time", "0", "--no-latest", "--json", str(path)]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", str(png)]
    except ImportError:
        png = None  # the curves still run; --plot exits with an install hint
    res = sparse_curves.main(args, out=lambda _: None)
    pts = res["points"]
    assert {(p["sweep"], p["width"]) for p in pts} >= {("width", w) for w in sparse_curves.WIDTHS}
    assert len(pts) == len(sparse_curves.LOOKUPS) + len(sparse_curves.WIDTHS)
    for p in pts:
        assert p["optimizer"] == "sgd" and p["dist"] == "zipf"
        assert set(p["impls"]) == {"pyoptim", "torch"}
        assert p["impls"]["pyoptim"]["pct_probe"] > 0
    assert json.loads(path.read_text())["points"][0]["lookups"] == pts[0]["lookups"]
    if png is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convergence_quick_run(tmp_path):
    from bench import convergence

    path = tmp_path / "c.json"
    res = convergence.main(["--quick", "--no-latest", "--json", str(path)], out=lambda _: None)
    ran = set(res["curves"])
    assert {"fp32", "bf16"} <= ran and ran | set(res["skipped"]) == set(convergence.MODES)
    for mode in ran:
        c = res["curves"][mode]
        assert len(c) >= 2 and all(x > 0 for x in c)
        assert res["summary"][mode]["final_loss"] == c[-1]
    assert res["summary"]["fp32"]["final_vs_fp32"] == 1.0
    assert set(json.loads(path.read_text())["curves"]) == ran


def test_same_memory_quick_run_shares_the_tensors(tmp_path):
    from bench import same_memory

    p, ours, theirs, _ = same_memory.make_pair("AdamW", torch.bfloat16, 4096, 1)
    state = ours.state[p]
    assert theirs.state[p] is state and state["exp_avg"].dtype == torch.bfloat16
    before = p.clone()
    theirs.step()  # torch's fused step on pyoptim's state: counts on from pyoptim's first step
    assert state["step"].item() == 2 and not torch.equal(p, before)
    path = tmp_path / "s.json"
    res = same_memory.main(["--quick", "--layouts", "2", "--json", str(path)], out=lambda _: None)
    combos = {(r["class"], r["dtype"], r["layout"]) for r in res["rows"]}
    assert combos == {(c, d, k) for c in same_memory.CLASSES for d in same_memory.DTYPES
                      for k in range(2)}
    assert all(r["pyoptim"] > 0 and r["torch-fused"] > 0 for r in res["rows"])
    assert json.loads(path.read_text())["rows"] == res["rows"]


def test_list_cuda_workloads_needs_no_gpu():
    lines = []
    assert cli.main(["--list", "--device", "cuda", "--scale", str(1 / 65536)],
                    out=lines.append) == {}
    impls = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    for prefix in ("adam/", "adamw/", "adamax/", "sgd/", "sgd-sparse/", "sparse_adam/",
                   "adagrad-sparse/", "rowwise_adagrad/", "in-backward/"):
        assert any(name.startswith(prefix) for name in impls), prefix
    assert all("pyoptim" in v for v in impls.values())
    dense = [v for k, v in impls.items() if k.split("/")[0] in ("adam", "adamw", "sgd")]
    assert dense and all("torch-fused" in v and "torch-forloop" not in v for v in dense)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_quick_run_every_workload():
    """Every --device cuda workload, at tiny sizes: each impl steps and is timed."""
    res = cli.main(TINY + ["--device", "cuda"], out=lambda line: None)
    listed = harness.discover(harness.BenchConfig(device="cuda", scale=1 / 65536))
    assert [w["name"] for w in res["workloads"]] == [w.name for w in listed]
    for w, lw in zip(res["workloads"], listed):
        assert [r["impl"] for r in w["rows"]] == list(lw.impls)
        assert all(r["n"] >= 2 and r["median_ms"] > 0 and r["gbps"] > 0 for r in w["rows"])
    assert res["machine"]["gpu"] and res["probe_for_pct"] in res["probes"]
