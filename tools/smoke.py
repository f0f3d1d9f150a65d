"""Smoke test of an installed pyoptim, run by tools/dist.py from a directory outside the tree."""

import importlib.metadata
import os
import sys

import torch

import pyoptim

here = os.path.dirname(os.path.abspath(__file__))
pkg = os.path.dirname(pyoptim.__file__)
assert "site-packages" in pkg and not pkg.startswith(here), f"imported the wrong pyoptim: {pkg}"
assert pyoptim.__version__ == importlib.metadata.version("pyoptim"), pyoptim.__version__
assert os.path.isfile(os.path.join(pkg, "py.typed")), "py.typed missing from the wheel"

torch.manual_seed(0)
for name, kwargs in [
    ("Adam", {"lr": 1e-2}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
]:
    ref = torch.nn.Linear(33, 17, dtype=torch.float64)
    mine = torch.nn.Linear(33, 17, dtype=torch.float64)
    mine.load_state_dict(ref.state_dict())
    opts = [
        getattr(torch.optim, name)(ref.parameters(), **kwargs),
        getattr(pyoptim, name)(mine.parameters(), **kwargs),
    ]
    x = torch.randn(8, 33, dtype=torch.float64)
    for _ in range(3):
        for model, opt in zip((ref, mine), opts):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(ref.parameters(), mine.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)

emb_ref = torch.nn.Embedding(50, 8, sparse=True)
emb = torch.nn.Embedding(50, 8, sparse=True)
emb.load_state_dict(emb_ref.state_dict())
opts = [
    torch.optim.SparseAdam(emb_ref.parameters(), lr=1e-2),
    pyoptim.SparseAdam(emb.parameters(), lr=1e-2),
]
idx = torch.tensor([1, 7, 7, 49])
for _ in range(3):
    for model, opt in zip((emb_ref, emb), opts):
        opt.zero_grad()
        model(idx).sum().backward()
        opt.step()
torch.testing.assert_close(emb.weight, emb_ref.weight)

print(
    f"smoke: pyoptim {pyoptim.__version__} from {pkg}, torch {torch.__version__}, "
    f"CPU level {pyoptim.cpu_capability()}, Adam/AdamW/SGD/SparseAdam agree with torch.optim",
    file=sys.stderr,
)
