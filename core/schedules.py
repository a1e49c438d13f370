"""Step learning-rate schedules as Lightning callbacks (epoch schedules: `core.optim.SchedulerConfig`).

A step schedule (noam, triangle) computes the rate from `trainer.global_step` alone, so a resumed
run continues on exactly the same curve. Every callback writes the rate into each optimizer param
group (scaled by the group's `lr_scale`, default 1) before a step; a group with a `fixed_lr` key
keeps that constant rate.
"""

from __future__ import annotations

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


class StepSchedule(Callback):
    """A callback that owns the learning rate (`core.optim.configure` refuses a torch scheduler beside it)."""

    sets_learning_rate = True


class NoamSchedule(StepSchedule):
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


class TriangleSchedule(StepSchedule):
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
