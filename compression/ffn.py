"""Structured FFN pruning: Taylor importance of intermediate neurons and their physical removal.

Neuron j of a `FeedForward` is row j of `fc1` (and its bias) and column j of `fc2`. Its Taylor
importance over a loader is |sum over tokens of activation_j * dL/dactivation_j| per batch,
summed over batches: the first-order change of the loss if the neuron's activation were zeroed.
It is computed as the gradient of a per-neuron multiplier of ones applied after the activation
(`neuron_masks`), the same trick `compression.importance` uses for heads.

Layers may keep different numbers of neurons. Each pruned FFN remembers the original indices
of its neurons (`kept_neurons`); `ffn_config` / `apply_ffn_config` record and replay them, so a
checkpoint of an FFN-pruned network reloads from the file alone (`compression.spec`, key "ffn").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from compression.importance import normalise_per_layer
from compression.prune import _slice_linear
from compression.ranking import keep_per_layer
from core.layers import FeedForward

KEPT_NEURONS_ATTR = "kept_neurons"


def feed_forwards(model: nn.Module) -> list[FeedForward]:
    """The model's FeedForward blocks in module order (layer 0 first)."""
    return [m for m in model.modules() if isinstance(m, FeedForward)]


def kept_neurons(ffn: FeedForward) -> list[int]:
    """Original (dense-model) indices of the intermediate neurons `ffn` still has."""
    return list(getattr(ffn, KEPT_NEURONS_ATTR, range(ffn.fc1.out_features)))


@contextmanager
def neuron_masks(model: nn.Module, masks: Sequence[Tensor]) -> Iterator[None]:
    """Multiply each FFN's activation by its (d_ff,) mask while inside the block (hooks removed after)."""
    ffns = feed_forwards(model)
    if len(masks) != len(ffns):
        raise ValueError(f"{len(masks)} neuron masks for {len(ffns)} FFN blocks")
    handles = [ffn.act.register_forward_hook(lambda _m, _i, out, mask=mask: out * mask)
               for ffn, mask in zip(ffns, masks, strict=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def ffn_taylor_importance(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor], normalise: bool = True,
) -> list[Tensor]:
    """Per FFN block, a (d_ff,) tensor of summed |dL/d mask_j| over `batches` (per-layer L2-normalised).

    Scored in eval mode (restored afterwards); parameter .grad fields are left untouched.
    """
    ffns = feed_forwards(model)
    if not ffns:
        raise ValueError(f"{type(model).__name__} has no FeedForward blocks to score")
    masks = [torch.ones(f.fc1.out_features, device=f.fc1.weight.device, requires_grad=True) for f in ffns]
    totals = [torch.zeros_like(m, requires_grad=False) for m in masks]
    was_training, n = model.training, 0
    model.eval()
    try:
        with neuron_masks(model, masks):
            for batch in batches:
                with torch.enable_grad():  # scoring needs a graph even inside no_grad
                    loss = loss_fn(model, batch)
                for total, grad in zip(totals, torch.autograd.grad(loss, masks, allow_unused=True), strict=True):
                    if grad is not None:
                        total += grad.detach().abs()
                n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("ffn_taylor_importance got no batches: scoring data is missing or empty")
    if not normalise:
        return [t.cpu() for t in totals]
    return [normalise_per_layer(t.cpu()[None])[0] for t in totals]


def neurons_to_keep(importance: Sequence[Tensor], prune: float) -> list[list[int]]:
    """Kept neuron indices per layer after removing the `prune` fraction with the lowest scores, ranked
    over all layers together (so layers end up with different widths); every layer keeps >= 1 neuron."""
    if isinstance(prune, bool) or not isinstance(prune, int | float) or not 0.0 <= prune < 1.0:
        raise ValueError(f"FFN prune fraction must be a number in [0, 1), got {prune!r}: "
                         "pruning every neuron would leave nothing")
    total = sum(len(s) for s in importance)
    return keep_per_layer(importance, total - math.floor(prune * total + 0.5))


@torch.no_grad()
def prune_ffn(ffn: FeedForward, keep: Sequence[int]) -> FeedForward:
    """Keep only intermediate neurons `keep` (indices into the current ones) of `ffn`, in place."""
    width = ffn.fc1.out_features
    keep = sorted(int(j) for j in keep)
    if not keep:
        raise ValueError("an FFN must keep at least one neuron")
    if len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= width:
        raise ValueError(f"neuron indices must be distinct and in [0, {width}), got {keep[:8]}...")
    original = kept_neurons(ffn)
    index = torch.tensor(keep, dtype=torch.long, device=ffn.fc1.weight.device)
    _slice_linear(ffn.fc1, index, 0)
    _slice_linear(ffn.fc2, index, 1)
    setattr(ffn, KEPT_NEURONS_ATTR, [original[j] for j in keep])
    return ffn


def prune_ffns(model: nn.Module, plan: Sequence[Sequence[int]]) -> nn.Module:
    """Apply `plan` (kept neuron indices per FFN block, layer order) to the model, in place."""
    ffns = feed_forwards(model)
    if len(plan) != len(ffns):
        raise ValueError(f"FFN plan has {len(plan)} layers, the model has {len(ffns)} FFN blocks")
    for ffn, keep in zip(ffns, plan, strict=True):
        prune_ffn(ffn, keep)
    return model


def ffn_config(model: nn.Module) -> list[list[int]] | None:
    """Original indices of every FFN's remaining neurons, or None if no FFN was pruned."""
    ffns = feed_forwards(model)
    if not any(hasattr(f, KEPT_NEURONS_ATTR) for f in ffns):
        return None
    return [kept_neurons(f) for f in ffns]


def apply_ffn_config(model: nn.Module, cfg: Sequence[Sequence[int]]) -> nn.Module:
    """Cut a freshly built dense model's FFNs to the layout `cfg` from `ffn_config`, in place."""
    ffns = feed_forwards(model)
    if len(cfg) != len(ffns):
        raise ValueError(f"FFN config has {len(cfg)} layers, the model has {len(ffns)} FFN blocks")
    plan = []
    for i, (ffn, wanted) in enumerate(zip(ffns, cfg, strict=True)):
        have = kept_neurons(ffn)
        position = {n: j for j, n in enumerate(have)}
        lost = [n for n in wanted if n not in position]
        if lost:
            raise ValueError(f"FFN layer {i}: neurons {lost[:8]} are not in the model (width {len(have)})")
        plan.append([position[n] for n in wanted])
    return prune_ffns(model, plan)
