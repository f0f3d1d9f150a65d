"""A small DLRM-like click model: embedding tables with sparse gradients next to dense MLPs,
trained with pyoptim in the two ways recommendation models are trained, and with torch.optim.

Data is generated here (no download): each sample has 4 categorical features (Zipf-distributed
ids into tables of 20k-200k rows, a bag of 1-3 ids per feature) and 8 dense features; the click
label comes from hidden per-id weights. The model: one nn.EmbeddingBag(sparse=True) per feature,
a bottom MLP for the dense features, pairwise dot-product interactions, a top MLP.

Optimizer setups (--setup, default: all of them, from the same start on the same batches):
  mixed     pyoptim.AdamW(lazy_sparse=True): one optimizer for every param; the tables'
            sparse grads get SparseAdam's update on the touched rows (README: lazy_sparse)
  rowwise   pyoptim.RowWiseAdagrad for the tables (one accumulator per row) and
            pyoptim.AdamW for the dense part
  torch     torch.optim.SparseAdam for the tables and torch.optim.AdamW for the dense part

    python examples/dlrm_sparse_dense.py [--steps 200] [--batch 2048] [--threads 2]

Prints the loss every 50 steps and, per setup, samples/s (the batches are made before timing)
and the time of the optimizer steps.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import pyoptim

TABLES = [200_000, 100_000, 50_000, 20_000]
DIM = 32
N_DENSE = 8


def zipf(n: int, size: int, s: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.arange(1, n + 1, dtype=torch.float64).pow(-s)
    return torch.randperm(n, generator=gen)[torch.multinomial(w, size, replacement=True,
                                                              generator=gen)]


class Data:
    """Synthetic clicks: label = Bernoulli(sigmoid(sum of hidden id weights + dense part))."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen
        self.hidden = [torch.randn(n, generator=gen) for n in TABLES]
        self.w_dense = torch.randn(N_DENSE, generator=gen)

    def batch(self, b: int):
        ids, offsets, logit = [], [], torch.zeros(b)
        for n, h in zip(TABLES, self.hidden):
            lens = torch.randint(1, 4, (b,), generator=self.gen)
            flat = zipf(n, int(lens.sum()), 1.05, self.gen)
            off = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]])
            ids.append(flat)
            offsets.append(off)
            logit += torch.zeros(b).index_add_(0, torch.repeat_interleave(torch.arange(b), lens),
                                               h[flat]) / lens
        dense = torch.randn(b, N_DENSE, generator=self.gen)
        logit += dense @ self.w_dense
        label = torch.bernoulli(torch.sigmoid(logit), generator=self.gen)
        return ids, offsets, dense, label


class DLRM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(n, DIM, mode="mean", sparse=True)
                                    for n in TABLES)
        self.bottom = nn.Sequential(nn.Linear(N_DENSE, 64), nn.ReLU(), nn.Linear(64, DIM))
        n_feat = len(TABLES) + 1
        self.top = nn.Sequential(nn.Linear(n_feat * (n_feat - 1) // 2 + DIM, 128), nn.ReLU(),
                                 nn.Linear(128, 1))

    def forward(self, ids, offsets, dense):
        x = self.bottom(dense)
        feats = torch.stack([x] + [t(i, o) for t, i, o in zip(self.tables, ids, offsets)], 1)
        inter = feats @ feats.transpose(1, 2)
        iu = torch.triu_indices(feats.shape[1], feats.shape[1], 1)
        return self.top(torch.cat([x, inter[:, iu[0], iu[1]]], 1)).squeeze(1)


def optimizers(setup: str, model: DLRM) -> list[torch.optim.Optimizer]:
    tables = list(model.tables.parameters())
    dense = list(model.bottom.parameters()) + list(model.top.parameters())
    if setup == "mixed":
        return [pyoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, lazy_sparse=True)]
    if setup == "rowwise":
        return [pyoptim.RowWiseAdagrad(tables, lr=0.05),
                pyoptim.AdamW(dense, lr=1e-3, weight_decay=0.0)]
    return [torch.optim.SparseAdam(tables, lr=1e-3),
            torch.optim.AdamW(dense, lr=1e-3, weight_decay=0.0)]


def train(setup: str, model: DLRM, batches: list) -> None:
    opts = optimizers(setup, model)
    loss_fn = nn.BCEWithLogitsLoss()
    t_opt = 0.0
    steps = len(batches)
    t0 = time.perf_counter()
    for step, (ids, offsets, dense, label) in enumerate(batches, 1):
        for o in opts:
            o.zero_grad()
        loss = loss_fn(model(ids, offsets, dense), label)
        loss.backward()
        t = time.perf_counter()
        for o in opts:
            o.step()
        t_opt += time.perf_counter() - t
        if step % 50 == 0 or step == steps:
            print(f"  {setup:<8} step {step:>4}  loss {loss.item():.4f}")
    wall = time.perf_counter() - t0
    print(f"  {setup:<8} {steps * len(batches[0][3]) / wall:,.0f} samples/s, optimizer steps "
          f"{1e3 * t_opt / steps:.2f} ms of {1e3 * wall / steps:.2f} ms per training step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--setup", action="append", choices=["mixed", "rowwise", "torch"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setups = args.setup or ["mixed", "rowwise", "torch"]
    torch.manual_seed(0)
    start = DLRM()
    data = Data(torch.Generator().manual_seed(1))
    batches = [data.batch(args.batch) for _ in range(args.steps)]  # made before timing
    for setup in setups:
        train(setup, copy.deepcopy(start), batches)


if __name__ == "__main__":
    main()
