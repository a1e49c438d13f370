"""Label-smoothed cross-entropy over target tokens, padding ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_ce(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, int]:
    """Summed label-smoothed CE and the number of real (non-pad) target tokens.

    The smoothed target puts 1 - epsilon on the gold token and spreads epsilon uniformly
    over the whole vocabulary (Szegedy et al. 2016; torch's convention), so per token
    loss = (1 - epsilon) * NLL(gold) + epsilon * mean_v(-log p_v). epsilon = 0 is plain CE.
    Returning the sum lets callers normalise per token across accumulated batches.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    flat_logits, flat_target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    loss = F.cross_entropy(flat_logits.float(), flat_target, ignore_index=pad_id,
                           label_smoothing=epsilon, reduction="sum")
    return loss, int((flat_target != pad_id).sum())
