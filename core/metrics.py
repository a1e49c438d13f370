"""Evaluation metrics that stay exact when evaluation is sharded across processes (`torchmetrics`).

A rank sees only its share of the validation batches; these metrics hold their state as tensors that
torchmetrics reduces across processes at `compute()`, so every rank gets the score of the whole split,
equal to a one-process evaluation:
* `TokenMean`: a loss averaged over tokens (sums in float64, not a mean of per-rank means);
* `GatheredRows`: rows (one per word, or per sentence pair) concatenated from every process, scored by a
  function of all of them — for scores that are not sums of per-batch parts (entity F1 needs whole
  sentences, Spearman needs every pair).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class TokenMean(Metric):
    """Sum of values / sum of weights over every process (e.g. loss summed over tokens / tokens)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value_sum: Tensor | float, weight: Tensor | float) -> None:
        """Add a batch's summed value and its weight (token count)."""
        self.total += torch.as_tensor(value_sum, dtype=torch.float64, device=self.total.device).detach()
        self.weight += torch.as_tensor(weight, dtype=torch.float64, device=self.weight.device)

    def compute(self) -> Tensor:
        """The weighted mean (0 when nothing was added)."""
        return (self.total / self.weight.clamp(min=1)).float()


class GatheredRows(Metric):
    """Rows of every process, concatenated, then `score(rows) -> {name: value}`.

    Each update adds a (N, columns) tensor (stored flat in float64, exact for indices and label ids, so
    a process that saw no batch still takes part in the gather); rows must carry whatever the score needs
    to regroup them (e.g. a sentence index), since the order across processes is not the one-process order.
    """

    full_state_update = False

    def __init__(self, columns: int, score: Callable[[Tensor], dict[str, float]]) -> None:
        super().__init__()
        self.columns, self.score = columns, score
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, rows: Tensor) -> None:
        """Append a batch's (N, columns) rows."""
        if rows.ndim != 2 or rows.shape[1] != self.columns:
            raise ValueError(f"expected rows of shape (N, {self.columns}), got {tuple(rows.shape)}")
        self.rows.append(rows.detach().to(torch.float64).reshape(-1))

    def compute(self) -> dict[str, float]:
        """The score of all rows ({} when there are none, e.g. `limit_val_batches=0`)."""
        rows = dim_zero_cat(self.rows) if len(self.rows) else torch.zeros(0)
        return self.score(rows.reshape(-1, self.columns)) if rows.numel() else {}
