"""Matrix factorization for recommendations, trained with pyoptim.SparseAdam and with
torch.optim.SparseAdam from the same start on the same batches.

The data is generated here (no download): users and items have hidden 16-dim tastes, users and
items are drawn with Zipf-distributed popularity (a few very popular items, a long tail), and the
rating of an interaction is the dot product of the hidden tastes plus noise. The model learns
user and item embeddings (nn.Embedding(sparse=True), so each step's gradient touches only the
rows in the batch) and per-user / per-item biases.

    python examples/sparse_adam_matrix_factorization.py [--steps 200] [--threads 2]

Prints both loss curves side by side and the time per optimizer step and per training step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import pyoptim


def zipf(n: int, size: int, s: float, gen: torch.Generator) -> torch.Tensor:
    """`size` ids in [0, n) with Zipf(s) popularity, popular ids scattered over the range."""
    w = torch.arange(1, n + 1, dtype=torch.float64).pow(-s)
    ranks = torch.multinomial(w, size, replacement=True, generator=gen)
    return torch.randperm(n, generator=gen)[ranks]


def make_data(n_users: int, n_items: int, n_inter: int, gen: torch.Generator):
    true_u = torch.randn(n_users, 16, generator=gen) / 2
    true_i = torch.randn(n_items, 16, generator=gen) / 2
    users = zipf(n_users, n_inter, 0.9, gen)
    items = zipf(n_items, n_inter, 1.1, gen)
    ratings = (true_u[users] * true_i[items]).sum(-1) + 0.1 * torch.randn(n_inter, generator=gen)
    return users, items, ratings


class MF(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user = torch.nn.Embedding(n_users, dim, sparse=True)
        self.item = torch.nn.Embedding(n_items, dim, sparse=True)
        self.user_bias = torch.nn.Embedding(n_users, 1, sparse=True)
        self.item_bias = torch.nn.Embedding(n_items, 1, sparse=True)
        for e in (self.user, self.item):
            torch.nn.init.normal_(e.weight, std=0.1)
        for e in (self.user_bias, self.item_bias):
            torch.nn.init.zeros_(e.weight)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        dot = (self.user(u) * self.item(i)).sum(-1)
        return dot + self.user_bias(u).squeeze(-1) + self.item_bias(i).squeeze(-1)


def train(model, opt, batches):
    losses, step_ms, opt_ms = [], [], []
    for u, i, r in batches:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(u, i), r)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        losses.append(loss.item())
        opt_ms.append((t2 - t1) * 1e3)
        step_ms.append((t2 - t0) * 1e3)
    return losses, statistics.median(step_ms), statistics.median(opt_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    users, items, ratings = make_data(args.users, args.items, args.batch * args.steps, gen)
    batches = [
        (users[k : k + args.batch], items[k : k + args.batch], ratings[k : k + args.batch])
        for k in range(0, users.numel(), args.batch)
    ]
    torch.manual_seed(0)
    model = MF(args.users, args.items, args.dim)
    runs = {}
    for name, cls in (("pyoptim.SparseAdam", pyoptim.SparseAdam),
                      ("torch.optim.SparseAdam", torch.optim.SparseAdam)):
        m = copy.deepcopy(model)
        runs[name] = train(m, cls(m.parameters(), lr=args.lr), batches)

    names = list(runs)
    print(f"{args.users} users x {args.items} items, dim {args.dim}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, pyoptim CPU level {pyoptim.cpu_capability()}")
    print(f"{'step':>6}  " + "  ".join(f"{n:>24}" for n in names))
    every = max(1, args.steps // 15)
    for s in sorted(set(range(0, args.steps, every)) | {args.steps - 1}):
        print(f"{s + 1:>6}  " + "  ".join(f"{runs[n][0][s]:>24.5f}" for n in names))
    print()
    for n in names:
        _, step_ms, opt_ms = runs[n]
        print(f"{n:>24}: {opt_ms:8.2f} ms per optimizer step, {step_ms:8.2f} ms per training "
              "step (median)")
    a, b = (runs[n][2] for n in names)
    print(f"optimizer step: torch / pyoptim time = {b / a:.2f}x (above 1: pyoptim faster)")


if __name__ == "__main__":
    main()
