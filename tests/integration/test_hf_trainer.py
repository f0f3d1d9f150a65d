"""pyoptim inside Hugging Face's Trainer (`make test-integration`): optimizers=(pyoptim.AdamW,
scheduler), a tiny BERT built from a config in code (nothing downloaded), a few CPU steps,
against the same run with torch.optim.AdamW (tests/tolerances.py's PARITY rule: within k x
torch's own for-loop <-> fused spread + floor).
"""

from __future__ import annotations

import pytest
import torch
from tolerances import parity_tolerance

import pyoptim

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (make test-integration installs it)")
pytest.importorskip("accelerate", reason="Trainer needs accelerate (make test-integration "
                    "installs it)")

STEPS = 6


class Tokens(torch.utils.data.Dataset):
    """32 random sequences of 12 token ids with a binary label, fixed by the seed."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (32, 12), generator=g)
        self.labels = torch.randint(0, 2, (32,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _model():
    """A two-label BERT of one layer, width 16, no dropout (runs comparable step for step)."""
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(tmp_path, make_optimizer):
    model = _model()
    opt = make_optimizer(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   optimizers=(opt, sched))
    trainer.train()
    assert trainer.state.global_step == STEPS
    return opt, sched, _flat(model)


def test_hf_trainer_trains_with_pyoptim_adamw_and_a_scheduler(tmp_path):
    opt, sched, ours = _train(tmp_path / "pyoptim",
                              lambda ps: pyoptim.AdamW(ps, lr=1e-2, weight_decay=0.01))
    assert isinstance(opt, pyoptim.AdamW)
    assert sched.last_epoch == STEPS and opt.param_groups[0]["lr"] == 1e-2 * (1.0 / (1 + STEPS))
    assert {s["step"].item() for s in opt.state.values()} == {float(STEPS)}
    loop = _train(tmp_path / "loop", lambda ps: torch.optim.AdamW(
        ps, lr=1e-2, weight_decay=0.01, foreach=False))[2]
    fused = _train(tmp_path / "fused", lambda ps: torch.optim.AdamW(
        ps, lr=1e-2, weight_decay=0.01, fused=True))[2]
    tol = parity_tolerance("adam", torch.float32)
    bound = tol.bound((fused - loop).abs().max().item(), loop.abs().max().item(), torch.float32)
    assert (ours - loop).abs().max().item() <= bound
    assert not torch.equal(ours, _flat(_model()))  # it trained
