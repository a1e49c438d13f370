"""Head importance scores: Taylor estimate (Michel et al. 2019) and a random baseline.

Scores come as {type: tensor (layers, heads)}, higher = more important. After pruning,
layers may have different head counts; the tensor is then as wide as the widest layer and
the missing entries are NaN (ranking ignores them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from compression.gates import attached_gates
from compression.heads import attention_modules
from core.attention import MultiHeadAttention


def _pad(rows: list[Tensor]) -> Tensor:
    width = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), width), float("nan"))
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.detach().float().cpu()
    return out


def normalise_per_layer(scores: Tensor, eps: float = 1e-12) -> Tensor:
    """Divide each layer's (row's) scores by their L2 norm, as Michel et al. do (NaN = no head)."""
    norm = torch.nan_to_num(scores, nan=0.0).norm(dim=-1, keepdim=True)
    return scores / norm.clamp_min(eps)


def taylor_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    types: list[str] | tuple[str, ...] | None = None,
    normalise: bool = True,
) -> dict[str, Tensor]:
    """Sum over batches of |dL/d mask_h| per head, normalised per layer; {type: (layers, heads)}.

    Each attention's head_mask is set to ones that require grad, so the gradient w.r.t. a
    head's mask is the first-order change of the loss if the head were removed. The model is
    scored in eval mode (no dropout noise) and restored to its previous mode and masks;
    parameter .grad fields are left untouched (torch.autograd.grad, not backward).
    """
    mods = attention_modules(model, types)
    if attached_gates(model):
        raise ValueError("model has head gates attached, which would overwrite the scoring masks; "
                         "call detach_gates first")
    attns: list[MultiHeadAttention] = [a for layers in mods.values() for a in layers]
    saved = [a.head_mask for a in attns]
    was_training = model.training
    masks = [torch.ones(a.num_heads, device=a.out_proj.weight.device, requires_grad=True) for a in attns]
    totals = [torch.zeros(a.num_heads, device=a.out_proj.weight.device) for a in attns]
    n = 0
    model.eval()
    try:
        for a, m in zip(attns, masks, strict=True):
            a.head_mask = m
        for batch in batches:
            # enable_grad: scoring needs a graph even when called inside no_grad (eval loops).
            with torch.enable_grad():
                loss = loss_fn(model, batch)
            # allow_unused: a layer with no heads left never reads its (empty) mask.
            grads = torch.autograd.grad(loss, masks, allow_unused=True)
            for total, g in zip(totals, grads, strict=True):
                if g is not None:
                    total += g.detach().abs()
            n += 1
    finally:
        for a, m in zip(attns, saved, strict=True):
            a.head_mask = m
        model.train(was_training)
    if n == 0:
        raise ValueError("taylor_importance got no batches: scoring data is missing or empty")
    out: dict[str, Tensor] = {}
    i = 0
    for kind, layers in mods.items():
        scores = _pad(totals[i : i + len(layers)])
        out[kind] = normalise_per_layer(scores) if normalise else scores
        i += len(layers)
    return out


def random_importance(
    model: nn.Module, types: list[str] | tuple[str, ...] | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """Uniform random scores with the same layout as `taylor_importance` (the baseline)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        kind: _pad([torch.rand(a.num_heads, generator=gen) for a in layers])
        for kind, layers in attention_modules(model, types).items()
    }
