"""The README's examples run, at small sizes, as a user runs them (a subprocess from the repo
root), and the matrix factorization's pyoptim and torch.optim SparseAdam trace the same losses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_dlrm_sparse_dense():
    out = _run("dlrm_sparse_dense.py", "--steps", "3", "--batch", "64", "--threads", "1",
               "--setup", "mixed", "--setup", "rowwise")
    for setup in ("mixed", "rowwise"):
        assert any(line.split()[:1] == [setup] and "samples/s" in line
                   for line in out.splitlines()), out


def test_sparse_adam_matrix_factorization():
    out = _run("sparse_adam_matrix_factorization.py", "--users", "300", "--items", "500",
               "--dim", "8", "--batch", "256", "--steps", "8", "--threads", "1")
    rows = [line.split() for line in out.splitlines()]
    losses = [r[1:] for r in rows if len(r) == 3 and r[0].isdigit()]
    assert len(losses) >= 2, out
    # the same SparseAdam on the same batches: the losses agree to the 5 printed decimals
    assert all(ours == theirs for ours, theirs in losses), out
    assert losses[-1] != losses[0], out  # and training moved them
