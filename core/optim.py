"""Optimiser and learning-rate scheduler as typed config, built the same way for every task.

Every LightningModule takes `optimizer: OptimizerConfig` and `scheduler: SchedulerConfig | None`
and returns `configure(...)` from `configure_optimizers`. One decay rule holds everywhere:
matrices (`p.ndim >= 2`: linear weights, embeddings) are decayed; vectors (biases, LayerNorm
scales and shifts) are not. A module passes the parameters that need a group of their own
(head-gate log-alphas at a constant rate, a CRF at a multiple of the rate) as `extra_groups`.

Step schedules (warm-up, triangle, Noam) are callbacks in `core.schedules`: they set the rate of
every group before each step. Epoch schedules come from `torch.optim.lr_scheduler`
(`ExponentialLR`, `ReduceLROnPlateau`) through `SchedulerConfig`; Lightning steps them and
keeps their state in the checkpoint. Using both would have two owners of one rate: an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class OptimizerConfig:
    """Adam or AdamW; `lr` is the base rate (a step-schedule callback overwrites it every step)."""

    name: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name must be one of {sorted(OPTIMIZERS)}, got {self.name!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"optimizer.lr must be > 0 and optimizer.weight_decay >= 0, got lr {self.lr}, "
                             f"weight_decay {self.weight_decay}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class SchedulerConfig:
    """An epoch schedule from `torch.optim.lr_scheduler`.

    'exponential': lr = lr_0 * gamma ** epoch (`ExponentialLR`). 'plateau': lr *= factor when
    `monitor` (a logged validation metric, `mode` 'max' for BLEU/F1, 'min' for a loss) has not
    improved for `patience` validations (`ReduceLROnPlateau`, floor `min_lr`).
    """

    name: Literal["exponential", "plateau"] = "plateau"
    gamma: float = 0.9
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    factor: float = 0.5
    patience: int = 3
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("exponential", "plateau"):
            raise ValueError(f"scheduler.name must be 'exponential' or 'plateau', got {self.name!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"scheduler.mode must be 'min' or 'max', got {self.mode!r}")
        if not 0 < self.gamma <= 1 or not 0 < self.factor < 1:
            raise ValueError(f"scheduler.gamma must be in (0, 1] and scheduler.factor in (0, 1), got gamma "
                             f"{self.gamma}, factor {self.factor}")


def as_dataclass(cls: type, value: object) -> object:
    """`value` as a `cls` instance: configs and checkpoints may hand a plain mapping back."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
    return cls(**value)


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, extra_groups: Sequence[dict] = (),
) -> list[dict]:
    """[decayed matrices, undecayed vectors, *extra_groups]; parameters in an extra group are left out of the
    first two. Frozen parameters are left out altogether."""
    taken = {id(p) for group in extra_groups for p in group["params"]}
    decay, no_decay = [], []
    for _, p in named_parameters:
        if p.requires_grad and id(p) not in taken:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
            *extra_groups]


def configure(
    module: nn.Module, optimizer: OptimizerConfig, scheduler: SchedulerConfig | None = None,
    extra_groups: Sequence[dict] = (), callbacks: Sequence[object] = (),
) -> torch.optim.Optimizer | dict:
    """What `configure_optimizers` returns: the optimiser over `module`'s parameter groups, with the
    scheduler (and the metric it monitors) when one is configured. `callbacks` are the trainer's: a
    step-schedule callback together with `scheduler` is a ValueError."""
    groups = parameter_groups(module.named_parameters(), optimizer.weight_decay, extra_groups)
    opt = OPTIMIZERS[optimizer.name](groups, lr=optimizer.lr, betas=optimizer.betas, eps=optimizer.eps)
    if scheduler is None:
        return opt
    owners = [type(c).__name__ for c in callbacks if getattr(c, "sets_learning_rate", False)]
    if owners:
        raise ValueError(f"model.scheduler ({scheduler.name}) and the schedule callback(s) {owners} would both "
                         "set the learning rate: keep one")
    if scheduler.name == "exponential":
        return {"optimizer": opt, "lr_scheduler": {
            "scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=scheduler.gamma), "interval": "epoch"}}
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=scheduler.mode, factor=scheduler.factor,
                                                         patience=scheduler.patience, min_lr=scheduler.min_lr)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": scheduler.monitor,
                                               "interval": "epoch", "strict": True}}
