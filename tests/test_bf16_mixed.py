"""bf16-mixed training (`--trainer.precision bf16-mixed`, CPU autocast): a tiny model of each trainable task
trains with finite fp32-reduced losses and resumes mid-run exactly (and so does fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from core.cli import main as train_main
from tests.conftest import requires_data
from tests.test_ddp_eval import ner_args, nmt_args

pytestmark = [pytest.mark.slow, requires_data]


class StopAtStep(Callback):
    """Ends the run after `step` optimizer steps, as a killed job would, leaving `max_steps` (and so the
    learning-rate schedule, which spans the whole run) as in the uninterrupted run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: D102
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("make_args", [nmt_args, ner_args], ids=["nmt", "ner"])
def test_bf16_mixed_trains_and_resumes_exactly(make_args, precision, tmp_path: Path, multi30k_slice: Path,
                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["--trainer.precision", precision, "--test", "false", "--trainer.limit_val_batches", "0",
              "--checkpoint.every_n_train_steps", "1", "--trainer.max_steps", "6"]
    # One set of arguments (one tokenizer: WordPiece training may order tied merges differently each time) and
    # two run folders.
    args = make_args(tmp_path, multi30k_slice)
    straight = train_main([*args, *common, "--trainer.logger.init_args.save_dir", str(tmp_path / "a")])
    assert straight.trainer.precision == precision
    loss = straight.trainer.callback_metrics["train/loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in straight.model.parameters())  # fp32 master weights
    args_b = [*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "b")]
    first = train_main([*args_b, *common, "--trainer.callbacks+=tests.test_bf16_mixed.StopAtStep",
                        "--trainer.callbacks.step=3"])
    assert first.trainer.global_step == 3
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = train_main([*args_b, *common, "--ckpt_path", str(last)])
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_sts_distillation_in_bf16_trains_and_resumes_exactly(precision, tokenizer_file: Path, tmp_path: Path) -> None:
    """The sentence-encoder student distilled (MSE + cosine to the cached teacher embeddings) as `sts.pipeline`
    trains it, with checkpoints: bf16-mixed keeps fp32 weights and a resumed run ends where a straight one does."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from core.training import RNGStateCallback
    from tests.conftest import save_like_lightning
    from tests.test_sts import tiny_datamodule, tiny_module

    teacher = tiny_module(tokenizer_file, seed=1)
    save_like_lightning(teacher, tmp_path / "teacher.ckpt")

    def fit(run: str, *callbacks: Callback, ckpt_path: Path | None = None) -> tuple[L.Trainer, L.LightningModule]:
        L.seed_everything(0)
        dm = tiny_datamodule(tokenizer_file, tmp_path, 96)
        student = tiny_module(tokenizer_file, seed=2, kd={"teacher": str(tmp_path / "teacher.ckpt")},
                              data_spec=dm.spec(), optimizer={"lr": 1e-3})
        checkpoint = ModelCheckpoint(tmp_path / run, save_last=True, every_n_train_steps=1, save_top_k=0)
        trainer = L.Trainer(max_steps=8, accelerator="cpu", precision=precision, logger=False,
                            callbacks=[checkpoint, RNGStateCallback(), *callbacks], limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
        trainer.fit(student, dm, ckpt_path=ckpt_path, weights_only=False)
        return trainer, student

    trainer, straight = fit("a")
    assert trainer.global_step == 8 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.callback_metrics["train/loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in straight.parameters())
    first, _ = fit("b", StopAtStep(3))
    assert first.global_step == 3
    trainer, resumed = fit("b", ckpt_path=tmp_path / "b/last.ckpt")
    assert trainer.global_step == 8
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_precision_the_hardware_lacks_is_one_clear_error(tmp_path: Path, multi30k_slice: Path, monkeypatch) -> None:
    import core.cli

    args = [*nmt_args(tmp_path, multi30k_slice), "--test", "false"]
    with pytest.raises(ValueError, match="trainer.precision 16-mixed: fp16 is a GPU precision"):
        train_main([*args, "--trainer.accelerator", "cpu", "--trainer.precision", "16-mixed"])
    monkeypatch.setattr(core.cli, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="trainer.precision bf16-mixed: this CPU has no native bf16"):
        train_main([*args, "--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed"])
