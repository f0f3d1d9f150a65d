"""pyoptim inside Lightning (`make test-integration`): configure_optimizers returns pyoptim.AdamW
and an LR scheduler; a few CPU training steps, against the same run with torch.optim.AdamW
(tests/tolerances.py's PARITY rule: within k x torch's own for-loop <-> fused spread + floor).
"""

from __future__ import annotations

import pytest
import torch
from tolerances import parity_tolerance

import pyoptim

L = pytest.importorskip("lightning", reason="Lightning is not installed (make test-integration "
                        "installs it)")

STEPS = 6
# Lightning 2.6.6's own use of a torch pytree API that torch 2.14 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated:FutureWarning")


class Regressor(L.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        self.make_optimizer = make_optimizer
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        opt = self.make_optimizer(self.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(make_optimizer) -> tuple[Regressor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g),
                                          torch.randn(64, 1, generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=False)
    model = Regressor(make_optimizer)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader)
    assert trainer.global_step == STEPS
    return model, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_lightning_trains_with_pyoptim_adamw_and_a_scheduler():
    def adamw(fused=None):
        return lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=fused)

    model, ours = _fit(lambda ps: pyoptim.AdamW(ps, lr=1e-2, weight_decay=0.01))
    assert isinstance(model.trainer.optimizers[0], pyoptim.AdamW)
    assert model.lrs == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3]  # the scheduler ran, per step
    assert all(s["step"].item() == STEPS for s in model.trainer.optimizers[0].state.values())
    _, loop = _fit(adamw(fused=False))
    _, fused = _fit(adamw(fused=True))
    tol = parity_tolerance("adam", torch.float32)
    bound = tol.bound((fused - loop).abs().max().item(), loop.abs().max().item(), torch.float32)
    assert (ours - loop).abs().max().item() <= bound
    torch.manual_seed(0)
    untrained = torch.cat([p.detach().flatten() for p in Regressor(None).parameters()])
    assert not torch.equal(ours, untrained)
