"""core.optim (one decay rule, torch epoch schedulers), core.config (resolved hparams, legacy upgrade), core.sweep."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.config import load_module, upgrade_hparams
from core.optim import OptimizerConfig, SchedulerConfig, configure, parameter_groups
from core.schedules import TriangleSchedule
from core.sweep import load_sweep, sweep_args


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_one_decay_rule_matrices_decay_vectors_do_not():
    net = _Net()
    extra = [{"params": [net.proj.bias], "lr": 1.0}]
    decay, no_decay, own = parameter_groups(net.named_parameters(), 0.1, extra)
    assert {id(p) for p in decay["params"]} == {id(net.emb.weight), id(net.proj.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(net.norm.weight), id(net.norm.bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"], own["lr"]) == (0.1, 0.0, 1.0)


def test_bad_optimizer_and_scheduler_configs_name_the_key():
    with pytest.raises(ValueError, match="optimizer.name"):
        OptimizerConfig(name="sgd")
    with pytest.raises(ValueError, match="optimizer.lr"):
        OptimizerConfig(lr=0.0)
    with pytest.raises(ValueError, match="scheduler.mode"):
        SchedulerConfig(mode="up")
    with pytest.raises(ValueError, match="scheduler.gamma"):
        SchedulerConfig(name="exponential", gamma=1.5)


class _Regression(L.LightningModule):
    def __init__(self, scheduler: SchedulerConfig | None) -> None:
        super().__init__()
        self.model = nn.Linear(4, 1)
        self.scheduler = scheduler
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        self.epoch_lrs: list[float] = []

    def _loader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=8)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/flat", 1.0)  # never improves: a plateau every epoch

    def on_train_epoch_start(self) -> None:
        self.epoch_lrs.append(self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        return configure(self.model, OptimizerConfig(lr=0.1), self.scheduler, callbacks=self.trainer.callbacks)


def _fit(module, callbacks=(), **kw) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks), **kw)
    trainer.fit(module)
    return trainer


def test_exponential_scheduler_from_torch_steps_every_epoch():
    module = _Regression(SchedulerConfig(name="exponential", gamma=0.5))
    _fit(module, max_epochs=4)
    assert module.epoch_lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_plateau_scheduler_monitors_a_logged_metric():
    module = _Regression(SchedulerConfig(name="plateau", monitor="val/flat", mode="max", factor=0.5, patience=1))
    _fit(module, max_epochs=5)
    # best at epoch 0; epochs 1 and 2 do not improve -> halved after epoch 2, again after epoch 4's wait
    assert module.epoch_lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])


def test_scheduler_and_step_schedule_callback_are_refused():
    module = _Regression(SchedulerConfig(name="exponential"))
    with pytest.raises(ValueError, match="TriangleSchedule.*both set the learning rate"):
        _fit(module, [TriangleSchedule(peak_lr=0.1)], max_epochs=1)


def test_legacy_flat_hparams_are_grouped():
    old = {"arch": {"d_model": 8}, "optimizer": "adam", "lr": 5e-4, "betas": [0.9, 0.98], "weight_decay": 0.0,
           "gate_types": None, "l0_lambda": 0.0, "gate_lr": None, "teacher": None, "kd_alpha": 0.5,
           "kd_temperature": 2.0, "val_beam_size": 1, "test_beam_size": 5}
    new = upgrade_hparams(old, {"val_beam_size": ("decoding", "val_beam_size"),
                                "test_beam_size": ("decoding", "test_beam_size")})
    assert new == {"arch": {"d_model": 8}, "kd": None, "gates": None,
                   "optimizer": {"name": "adam", "lr": 5e-4, "betas": [0.9, 0.98], "weight_decay": 0.0},
                   "decoding": {"val_beam_size": 1, "test_beam_size": 5}}
    gated = upgrade_hparams({"gate_types": ["encoder_self"], "l0_lambda": 0.1, "teacher": "t.ckpt", "kd_alpha": 0.3})
    assert gated["gates"] == {"types": ["encoder_self"], "l0_lambda": 0.1}
    assert gated["kd"] == {"teacher": "t.ckpt", "alpha": 0.3}
    assert upgrade_hparams(new) == new  # already grouped: unchanged


def test_sweep_file_expands_to_train_arguments(tmp_path):
    sweep = load_sweep("configs/nmt/gates_l0_sweep.yaml")
    assert "0.05" in sweep.runs and len(sweep.runs) >= 8
    args = sweep_args(sweep, "0.1_enc")
    assert args[:4] == ["--config", "configs/nmt/small.yaml", "--config", "configs/nmt/gates_l0.yaml"]
    assert args[4:6] == ["--trainer.logger.init_args.name", "nmt_gates_l0_0.1_enc"]
    assert args[6] == "--model.init_args.gates"
    assert '"l0_lambda": 0.1' in args[7]
    with pytest.raises(ValueError, match="no run 'nope'"):
        sweep_args(sweep, "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("configs: [configs/nmt/small.yaml]\nruns: {a: 3}\n")
    with pytest.raises(ValueError, match="run 'a' must map dotted config keys"):
        load_sweep(bad)
    bad.write_text("configs: [missing.yaml]\nruns: {a: {}}\n")
    with pytest.raises(ValueError, match="config 'missing.yaml' does not exist"):
        load_sweep(bad)


# --- checkpoints hold the resolved config as plain data; older flat checkpoints still load ----------------

ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=1, dropout=0.0, max_len=32)
DATA_SPEC = {"vocab_size": 40, "pad_id": 0, "bos_id": 2, "eos_id": 3}


def _translator(tmp_path, **kw):
    from nmt.module import TranslationModule

    torch.manual_seed(0)
    return TranslationModule(arch=ARCH, data_spec=DATA_SPEC, **kw).eval()


def _saved(module, path):
    from conftest import save_like_lightning

    save_like_lightning(module, path)
    return torch.load(path, weights_only=False)


def test_checkpoint_stores_the_resolved_config_as_plain_data(tmp_path):
    from nmt.module import TranslationModule

    source = _translator(tmp_path)
    _saved(source, tmp_path / "source.ckpt")
    student = _translator(tmp_path, init_from=str(tmp_path / "source.ckpt"), gates={"types": ["encoder_self"]},
                          optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
                          decoding={"test_beam_size": 3})
    hparams = _saved(student, tmp_path / "student.ckpt")["hyper_parameters"]
    assert hparams["init_from"] is None and hparams["kd"] is None  # how training started is not the model
    assert hparams["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}  # plain, as given
    # weights-only loading works: no pickled config classes in the file
    assert torch.load(tmp_path / "student.ckpt", weights_only=True)["hyper_parameters"]["gates"]["types"] == [
        "encoder_self"]
    reloaded = load_module(TranslationModule, tmp_path / "student.ckpt").eval()
    assert reloaded.decoding.test_beam_size == 3 and reloaded.optimizer_config.weight_decay == 0.1
    src = torch.tensor([[5, 6, 7, 3]])
    assert reloaded.translate(src, 1) == student.translate(src, 1)


def test_flat_checkpoint_of_before_the_redesign_loads_with_its_settings(tmp_path):
    from nmt.module import TranslationModule

    module = _translator(tmp_path, decoding={"length_penalty": 0.6, "test_beam_size": 4})
    ckpt = _saved(module, tmp_path / "new.ckpt")
    ckpt["hyper_parameters"] = {  # what a checkpoint of the flat-argument module held
        "arch": ARCH, "data_spec": DATA_SPEC, "optimizer": "adam", "lr": 5e-4, "betas": [0.9, 0.98],
        "weight_decay": 0.0, "label_smoothing": 0.1, "val_beam_size": 1, "test_beam_size": 4, "length_penalty": 0.6,
        "max_len_a": 1.2, "max_len_b": 10, "num_samples": 8, "gate_types": None, "l0_lambda": 0.0, "init_from": None,
        "teacher": None, "kd_alpha": 0.5, "kd_temperature": 2.0, "gate_lr": None}
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = load_module(TranslationModule, tmp_path / "old.ckpt").eval()
    assert old.optimizer_config == OptimizerConfig(name="adam", lr=5e-4, betas=(0.9, 0.98))
    assert old.decoding.test_beam_size == 4 and old.kd is None and old.gate_config is None
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    assert old.translate(src, 2) == module.translate(src, 2)
