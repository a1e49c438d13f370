"""What to keep: global ranking of heads / FFN neurons in kernel-friendly blocks, and whole-layer removal.

Width pruning ranked unit by unit leaves ragged widths (7 heads, 1,124 neurons); CPU matmul
kernels work in register/cache blocks, so such a layer costs about as much as the next multiple
of the block and the pruned model is slower than its FLOPs promise. `keep_per_layer` ranks
blocks of `multiple` units instead: the same global Taylor ranking, every layer's width a
multiple of the block (even head counts, FFN widths in 64s).

Dropping a whole layer also saves its fixed per-layer cost (layer norms, residual adds,
attention dispatch) that width pruning never removes; `layers_to_drop` chooses the layers whose
removal raises the task loss least (measured exactly, one evaluation per candidate layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def keep_per_layer(scores: Sequence[Tensor], keep_total: int, multiple: int = 1) -> list[list[int]]:
    """Kept indices per layer: the highest-scoring units over all layers, at most `keep_total` in all.

    Within a layer units are taken in score order in blocks of `multiple` (the last block of a
    layer whose width is not a multiple is smaller), blocks are ranked globally by their mean
    score, and every layer keeps at least its best block. NaN scores (units already gone) are
    never kept. Returns sorted current indices per layer.
    """
    if multiple < 1:
        raise ValueError(f"the block size (multiple) must be >= 1, got {multiple}")
    orders, blocks = [], []
    for layer, s in enumerate(scores):
        values = s.detach().float().cpu().tolist()
        order = sorted((j for j, v in enumerate(values) if not math.isnan(v)), key=lambda j: -values[j])
        if not order:
            raise ValueError(f"layer {layer} has no units left to keep")
        orders.append(order)
        for start in range(0, len(order), multiple):
            block = order[start : start + multiple]
            blocks.append((sum(values[j] for j in block) / len(block), layer, start, len(block)))
    first = [b for b in blocks if b[2] == 0]
    kept = {layer: size for _, layer, _, size in first}
    total = sum(kept.values())
    if total > keep_total:
        raise ValueError(f"keeping {keep_total} units leaves less than one block of {multiple} per layer "
                         f"({len(orders)} layers need {total}): the pruning target leaves nothing")
    for _, layer, _, size in sorted((b for b in blocks if b[2] > 0), key=lambda b: (-b[0], b[1], b[2])):
        if total + size > keep_total:
            break
        kept[layer] += size
        total += size
    return [sorted(order[: kept[layer]]) for layer, order in enumerate(orders)]


@torch.no_grad()
def layers_to_drop(
    bert: nn.Module, batches: Iterable[Any], loss_fn: Callable[[Any], Tensor], count: int
) -> list[int]:
    """Indices of `count` encoder layers (`bert.layers`) to remove, chosen greedily.

    Each round evaluates the mean of `loss_fn(batch)` with every remaining layer skipped in turn
    and drops the layer whose absence raises it least; `bert.layers` is restored afterwards.
    """
    layers = list(bert.layers)
    if not 0 <= count < len(layers):
        raise ValueError(f"drop_layers must be in [0, {len(layers)}) for a {len(layers)}-layer encoder, got {count}")
    batches = list(batches)
    if count and not batches:
        raise ValueError("layers_to_drop got no batches: scoring data is missing or empty")
    kept, dropped = list(range(len(layers))), []
    was_training = bert.training
    bert.eval()
    try:
        for _ in range(count):
            losses = {}
            for candidate in kept:
                bert.layers = nn.ModuleList(layers[i] for i in kept if i != candidate)
                losses[candidate] = sum(float(loss_fn(b)) for b in batches) / len(batches)
            best = min(losses, key=losses.get)
            kept.remove(best)
            dropped.append(best)
    finally:
        bert.layers = nn.ModuleList(layers)
        bert.train(was_training)
    return sorted(dropped)
