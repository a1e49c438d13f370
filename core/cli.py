"""The `train.py` command: any YAML experiment, command-line overrides, resume.

Built on LightningCLI: a config names a LightningModule and a LightningDataModule by
class path; unknown keys or bad values are rejected by jsonargparse with the key named.
Each datamodule exposes `spec()` (what the model must agree with: vocabulary size, label
list, ...), linked into the module's `data_spec` argument, and `data_files()` (fingerprinted
into the run record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, Timer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from core.sweep import expand_sweep
from core.training import AtomicCheckpointIO, LastBatchSafeCheckpoint, RNGStateCallback, write_run_record


class RunRecordCallback(SaveConfigCallback):
    """Saves the resolved config, then the run record (git commit, data hashes) and hparams."""

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Called on rank 0 only: `trainer.log_dir` would broadcast (and hang under DDP).
        log_dir = Path(trainer.logger.log_dir if trainer.logger else trainer.default_root_dir)
        datamodule = trainer.datamodule
        files = datamodule.data_files() if hasattr(datamodule, "data_files") else []
        write_run_record(log_dir, files, {"config": str(log_dir / self.config_filename)})


class LabCLI(LightningCLI):
    """LightningCLI with the lab's defaults and a `--ckpt_path` to resume from."""

    @override
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume from (e.g. <run>/checkpoints/last.ckpt)")
        parser.add_argument("--test", type=bool, default=True, help="evaluate on the test split after fit")
        parser.add_argument("--fit", type=bool, default=True,
                            help="false: only evaluate --ckpt_path on the validation (and, with --test, test) split")
        parser.link_arguments("data", "model.init_args.data_spec", compute_fn=lambda dm: dm.spec(),
                              apply_on="instantiate")
        # `last.ckpt` is what resume uses; `--checkpoint.every_n_train_steps N` adds mid-epoch saves.
        parser.add_lightning_class_args(LastBatchSafeCheckpoint, "checkpoint")
        # The datamodules' batch samplers shard training and evaluation batches across processes themselves.
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "trainer.use_distributed_sampler": False})

    def instantiate_trainer(self, **kwargs):
        """The configured Trainer, writing checkpoints atomically (`AtomicCheckpointIO`).

        The plugin is added here rather than as a parser default, which jsonargparse cannot serialise
        into the saved config (it warned on every run)."""
        configured = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        configured = configured if isinstance(configured, list) else [configured]
        return super().instantiate_trainer(**kwargs, plugins=[*configured, AtomicCheckpointIO()])


class ParameterSummary(Callback):
    """Parameters of the module and of each of its top-level children at fit start (rank 0), tied or
    shared tensors counted once. Replaces Lightning's model summary, whose FLOPs column reads 0 for
    modules without an `example_input_array` (FLOPs are measured by `compression.measure`)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log one line per child with parameters, then the total and the trainable count."""
        def count(module: torch.nn.Module, trainable: bool = False) -> int:
            params = {id(p): p for p in module.parameters() if p.requires_grad or not trainable}
            return sum(p.numel() for p in params.values())

        rows = [f"  {name} ({type(child).__name__}): {count(child):,}" for name, child in pl_module.named_children()
                if count(child)]
        rank_zero_info(f"[model] {type(pl_module).__name__}: {count(pl_module):,} parameters "
                       f"({count(pl_module, trainable=True):,} trainable)\n" + "\n".join(rows))


def default_callbacks() -> list:
    """Callbacks every run gets besides the checkpoint: lr logging, RNG state, parameter summary."""
    return [
        LearningRateMonitor(logging_interval="step"),
        RNGStateCallback(),
        ParameterSummary(),
    ]


def main(args: list[str] | None = None) -> LabCLI:
    """Parse (a sweep run expanded), fit (resuming from `--ckpt_path` if given), then test; returns the CLI."""
    if args is None:
        # A sweep run given on the command line becomes that command line (LightningCLI reads sys.argv itself
        # and warns when given both).
        sys.argv = sys.argv[:1] + expand_sweep(sys.argv[1:])
    else:
        args = expand_sweep(list(args))
    cli = LabCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, args=args, save_config_callback=RunRecordCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": default_callbacks(), "enable_model_summary": False},
        seed_everything_default=1234,
    )
    check_precision(str(cli.config.trainer.precision), cli.trainer)
    # Our own checkpoints hold dataclass hparams and RNG states, so not weights-only.
    if cli.config.fit:
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=False)
    else:
        if not cli.config.ckpt_path:
            raise ValueError("--fit false evaluates a checkpoint: give it with --ckpt_path")
        timer = Timer()  # the validation loop's wall time (after the processes started), into metrics.json
        cli.trainer.callbacks.append(timer)
        cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=False)
        write_metrics(cli.trainer, "validate", seconds=timer.time_elapsed("validate"))
    if cli.config.test:
        cli.trainer.test(cli.model, cli.datamodule, ckpt_path=None if cli.config.fit else cli.config.ckpt_path,
                         weights_only=False)
        write_metrics(cli.trainer, "test")
    return cli


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(requested: str, trainer: L.Trainer) -> None:
    """One clear error for `trainer.precision` the hardware lacks: bf16 on a GPU or CPU without it (emulated,
    slower than fp32), or fp16 on a CPU (Lightning would silently train bf16 instead of `16-mixed`)."""
    device = trainer.strategy.root_device.type
    if "bf16" in requested:
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"trainer.precision {requested}: this GPU has no bf16 (it needs compute capability 8.0+); "
                             "use 16-mixed or 32-true")
        if device == "cpu" and not cpu_has_bf16():
            raise ValueError(f"trainer.precision {requested}: this CPU has no native bf16 (AVX-512 BF16 or AMX), so "
                             "it would be emulated and slower than fp32; use 32-true")
    elif requested.startswith("16") and device == "cpu":
        raise ValueError(f"trainer.precision {requested}: fp16 is a GPU precision; on CPU use bf16-mixed (with "
                         "native bf16) or 32-true")


def write_metrics(trainer: L.Trainer, stage: str, seconds: float | None = None) -> None:
    """Add the stage's logged metrics (whole split, reduced across processes) to `<run>/metrics.json` (rank 0),
    with the stage's wall time if measured."""
    if not trainer.is_global_zero:
        return
    path = Path(trainer.logger.log_dir if trainer.logger else trainer.default_root_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[stage] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if seconds is not None:
        metrics[stage]["seconds"] = seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1, sort_keys=True))
