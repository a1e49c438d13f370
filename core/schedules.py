"""Learning-rate schedules as Lightning callbacks.

Step-based schedules (noam, triangle) compute the rate from `trainer.global_step` alone, so a
resumed run continues on exactly the same curve; epoch-based ones (exponential, plateau) keep
what they need in the checkpoint through `state_dict`. Every callback writes the rate into
each optimizer param group (scaled by the group's `lr_scale`, default 1) before a step; a group
with a `fixed_lr` key keeps that constant rate.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def _set_lr(trainer: L.Trainer, lr: float) -> None:
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            # A group with its own constant rate (`fixed_lr`, e.g. head-gate log-alphas) is not scheduled.
            group["lr"] = group["fixed_lr"] if "fixed_lr" in group else lr * group.get("lr_scale", 1.0)


def noam_lr(step: int, d_model: int, warmup_steps: int, factor: float = 1.0, step_factor: float = 1.0) -> float:
    """Noam rate: factor * d^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step * step_factor + 1.

    `step_factor` > 1 walks the curve faster (seed 002 used 4 to speed up the decay).
    """
    s = step * step_factor + 1
    return factor * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)


def triangle_lr(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class NoamSchedule(Callback):
    """Noam schedule (Vaswani et al. 2017) set before every optimizer step."""

    def __init__(self, d_model: int, warmup_steps: int = 4000, factor: float = 1.0, step_factor: float = 1.0):
        if warmup_steps <= 0:
            raise ValueError(f"NoamSchedule: warmup_steps must be > 0, got {warmup_steps}")
        self.d_model, self.warmup_steps, self.factor, self.step_factor = d_model, warmup_steps, factor, step_factor

    def lr_at(self, step: int) -> float:
        """The scheduled learning rate after `step` optimizer steps."""
        return noam_lr(step, self.d_model, self.warmup_steps, self.factor, self.step_factor)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _set_lr(trainer, self.lr_at(trainer.global_step))


class TriangleSchedule(Callback):
    """Linear warm-up then linear decay to zero at the end of training.

    `warmup` is a step count (int) or a fraction of all steps (float < 1); `total_steps`
    defaults to the trainer's estimate of optimizer steps for the whole fit.
    """

    def __init__(self, peak_lr: float, warmup: float = 0.1, total_steps: int | None = None):
        if peak_lr <= 0:
            raise ValueError(f"TriangleSchedule: peak_lr must be > 0, got {peak_lr}")
        self.peak_lr, self.warmup, self.total_steps = peak_lr, warmup, total_steps

    def resolve(self, trainer: L.Trainer) -> tuple[int, int]:
        """(warmup steps, total steps) of this run, from the trainer's planned steps."""
        total = self.total_steps or int(trainer.estimated_stepping_batches)
        warmup = int(self.warmup * total) if self.warmup < 1 else int(self.warmup)
        return max(1, warmup), total

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        warmup, total = self.resolve(trainer)
        _set_lr(trainer, triangle_lr(trainer.global_step, self.peak_lr, warmup, total))


class ExponentialSchedule(Callback):
    """lr = initial_lr * gamma ** epoch."""

    def __init__(self, initial_lr: float, gamma: float = 0.9):
        if not 0 < gamma <= 1:
            raise ValueError(f"ExponentialSchedule: gamma must be in (0, 1], got {gamma}")
        self.initial_lr, self.gamma = initial_lr, gamma

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _set_lr(trainer, self.initial_lr * self.gamma**trainer.current_epoch)


class PlateauSchedule(Callback):
    """Multiply the rate by `factor` when `monitor` has not improved for `patience` epochs."""

    def __init__(
        self, initial_lr: float, monitor: str = "val/bleu", mode: str = "max", factor: float = 0.5,
        patience: int = 3, min_lr: float = 0.0,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"PlateauSchedule: mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.factor, self.patience, self.min_lr = monitor, mode, factor, patience, min_lr
        self.lr, self.best, self.bad_epochs = initial_lr, -math.inf if mode == "max" else math.inf, 0

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _set_lr(trainer, self.lr)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"PlateauSchedule monitors {self.monitor!r}, which was not logged; "
                f"logged metrics: {sorted(trainer.callback_metrics)}"
            )
        value = float(trainer.callback_metrics[self.monitor])
        improved = value > self.best if self.mode == "max" else value < self.best
        if improved:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.lr, self.bad_epochs = max(self.min_lr, self.lr * self.factor), 0
            _set_lr(trainer, self.lr)

    @override
    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.lr, self.best, self.bad_epochs = state_dict["lr"], state_dict["best"], state_dict["bad_epochs"]
