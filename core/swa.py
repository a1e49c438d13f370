"""Stochastic weight averaging over the last epochs, as a callback.

Averages the task module's registered submodules (the translation model; a tagger's encoder,
casing embedding and head) at the end of each epoch from `start_epoch` on with
`torch.optim.swa_utils.AveragedModel`; the learning-rate schedule is left alone. A teacher is not
a registered submodule, so it is neither copied nor averaged. At the end of fit the averaged
weights are copied into the model, so the test/decode that follows and the `swa.ckpt` written
beside `last.ckpt` use them, while `last.ckpt` keeps the raw weights and the running average
(callback state), so a resumed run continues both.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.optim.swa_utils import AveragedModel
from typing_extensions import override


def _network(pl_module: L.LightningModule) -> nn.ModuleDict:
    """The module's registered submodules in one container that shares their parameters."""
    return nn.ModuleDict(dict(pl_module.named_children()))


class SWA(Callback):
    """Average weights over the last `last_fraction` of `trainer.max_epochs` (or from `start_epoch`)."""

    def __init__(self, last_fraction: float = 0.25, start_epoch: int | None = None) -> None:
        if not 0 < last_fraction <= 1:
            raise ValueError(f"SWA.last_fraction must be in (0, 1], got {last_fraction}")
        self.last_fraction, self.start_epoch = last_fraction, start_epoch
        self.averaged: AveragedModel | None = None
        self._pending_state: dict | None = None

    def first_epoch(self, trainer: L.Trainer) -> int:
        """0-based epoch whose end adds the first snapshot."""
        if self.start_epoch is not None:
            return self.start_epoch
        if not trainer.max_epochs or trainer.max_epochs < 0:
            raise ValueError("SWA.last_fraction needs trainer.max_epochs; set SWA.start_epoch instead")
        return max(0, trainer.max_epochs - max(1, round(self.last_fraction * trainer.max_epochs)))

    def _ensure(self, pl_module: L.LightningModule) -> AveragedModel:
        if self.averaged is None:
            self.averaged = AveragedModel(_network(pl_module), device=torch.device("cpu"), use_buffers=True)
            if self._pending_state is not None:
                self.averaged.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.averaged

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.first_epoch(trainer):
            self._ensure(pl_module).update_parameters(_network(pl_module))

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After fit, not at train end: ModelCheckpoint writes `last.ckpt` in on_train_end,
        # and that file must keep the raw weights a resumed run continues from.
        if self._pending_state is not None:
            self._ensure(pl_module)
        if self.averaged is None or int(self.averaged.n_averaged) == 0:
            return
        averaged = self.averaged.module.state_dict()
        _network(pl_module).load_state_dict({k: v.to(pl_module.device) for k, v in averaged.items()})
        ckpt_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
        if ckpt_dir:
            trainer.save_checkpoint(Path(ckpt_dir) / "swa.ckpt", weights_only=False)

    @override
    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict() if self.averaged is not None else self._pending_state}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._pending_state = state_dict.get("averaged")
