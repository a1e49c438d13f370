"""Loss, schedules, SWA and parallel-data checks of the translation spine."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.schedules import NoamSchedule, TriangleSchedule
from core.swa import SWA
from nmt.data import read_parallel
from nmt.loss import label_smoothed_ce


def test_label_smoothing_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 5, 11), torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0
    loss, ntok = label_smoothed_ce(logits, target, 0.0, pad_id=0)
    expected = F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), ignore_index=0, reduction="sum")
    assert ntok == int((target != 0).sum())
    torch.testing.assert_close(loss, expected)


def test_label_smoothing_hand_computed():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0]]])  # one token, vocab 4, gold = 1, pad = 3
    eps = 0.2
    logp = [x - math.log(sum(math.exp(v) for v in (2.0, 0.5, -1.0, 0.0))) for v in (2.0, 0.5, -1.0, 0.0)
            for x in [v]]
    expected = -(1 - eps) * logp[1] - eps * sum(logp) / 4
    loss, ntok = label_smoothed_ce(logits, torch.tensor([[1]]), eps, pad_id=3)
    assert ntok == 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_rejects_bad_epsilon():
    with pytest.raises(ValueError, match="epsilon"):
        label_smoothed_ce(torch.zeros(1, 1, 3), torch.tensor([[1]]), 1.0, 0)


def _fake_trainer(step: int = 0, epoch: int = 0, max_steps: int = 100):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=123.0)
    return SimpleNamespace(optimizers=[opt], global_step=step, current_epoch=epoch,
                           estimated_stepping_batches=max_steps, sanity_checking=False, callback_metrics={})


def _lr(trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def test_noam_curve():
    d, warmup, factor = 256, 100, 2.0
    sched = NoamSchedule(d, warmup, factor)
    lrs = []
    for step in range(1000):
        trainer = _fake_trainer(step)
        sched.on_train_batch_start(trainer, None, None, 0)
        lrs.append(_lr(trainer))
    peak = factor * d**-0.5 * warmup**-0.5
    assert max(lrs) == pytest.approx(peak)
    assert lrs.index(max(lrs)) == warmup - 1  # step s uses s+1, so the peak is at s = warmup - 1
    assert lrs[9] == pytest.approx(peak * 10 / warmup)  # linear warm-up
    assert lrs[4 * warmup - 1] == pytest.approx(peak / 2)  # 1/sqrt decay
    fast = NoamSchedule(d, warmup, factor, step_factor=4.0)
    trainer = _fake_trainer(4 * warmup - 1)
    fast.on_train_batch_start(trainer, None, None, 0)
    # the step factor walks the curve 4x faster: step 399 sits where step 1596 would
    assert _lr(trainer) == pytest.approx(factor * d**-0.5 * (4 * (4 * warmup - 1) + 1) ** -0.5)


def test_triangle_curve():
    sched = TriangleSchedule(peak_lr=1e-3, warmup=0.1)
    lrs = []
    for step in range(100):
        trainer = _fake_trainer(step, max_steps=100)
        sched.on_train_batch_start(trainer, None, None, 0)
        lrs.append(_lr(trainer))
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-3 * (100 - 55) / 90)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[99] == pytest.approx(1e-3 / 90)


class _Regression(L.LightningModule):
    """A linear model on fixed random data: enough to exercise callbacks with a real Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(4, 1)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
        self.seen_lrs: list[float] = []

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=8)

    def training_step(self, batch, batch_idx):
        self.seen_lrs.append(self.optimizers().param_groups[0]["lr"])
        return F.mse_loss(self.model(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.weights: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.weights.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})


def _fit(module, callbacks, **kw) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, **kw)
    trainer.fit(module)
    return trainer


def test_triangle_drives_the_optimizer_in_a_real_trainer():
    module = _Regression()
    _fit(module, [TriangleSchedule(peak_lr=0.1, warmup=2)], max_epochs=3)  # 4 batches x 3 = 12 steps
    expected = [0.05, 0.1] + [0.1 * (12 - s) / 10 for s in range(2, 12)]
    assert module.seen_lrs == pytest.approx(expected)


def test_swa_weights_are_the_mean_of_snapshots():
    module, snaps = _Regression(), _Snapshots()
    _fit(module, [TriangleSchedule(peak_lr=0.05, warmup=1), snaps, SWA(last_fraction=0.5)], max_epochs=4)
    # last_fraction 0.5 of 4 epochs -> snapshots at the end of epochs 2 and 3
    for name, value in module.model.state_dict().items():
        mean = (snaps.weights[2][name] + snaps.weights[3][name]) / 2
        torch.testing.assert_close(value, mean)
        assert not torch.allclose(value, snaps.weights[3][name])


def test_read_parallel_checks(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\nthree\n")
    tgt.write_text("eins\nzwei\n")
    with pytest.raises(ValueError, match=r"a\.en has 3 lines, .*a\.de has 2"):
        read_parallel(src, tgt)
    tgt.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_parallel(src, tgt)
    tgt.write_text("eins\n   \ndrei\n")
    s, t, dropped = read_parallel(src, tgt)
    assert (s, t, dropped) == (["one", "three"], ["eins", "drei"], 1)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_parallel(tmp_path / "missing.en", tgt)
