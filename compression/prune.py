"""Physical removal of attention heads, head-selection from scores, and head configs.

Removing head h of a `MultiHeadAttention` drops its head_dim rows from each of q, k and v
(inside the fused `qkv_proj`, or `q_proj` and the fused `kv_proj` for cross-attention) and
its head_dim input columns from `out_proj`; the output bias stays, so a layer with no heads
left adds only that bias on its residual path — exactly what masking every head gives.

Each pruned attention remembers the original indices of its remaining heads (`kept_heads`).
`head_config` collects them so a checkpoint can record them, and `apply_head_config` cuts a
freshly built dense model to the same shapes before `load_state_dict`.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, nn

from compression.gates import GATES_ATTR
from compression.heads import attention_modules, check_types
from core.attention import MultiHeadAttention

HeadPlan = dict[str, list[list[int]]]
KEPT_ATTR = "kept_heads"


def kept_heads(attn: MultiHeadAttention) -> list[int]:
    """Original (dense-model) indices of the heads `attn` still has."""
    return list(getattr(attn, KEPT_ATTR, range(attn.num_heads)))


def _as_index(h: object) -> int | None:
    """`h` as a Python int if it is an integer (int, numpy or 0-d tensor integer), else None."""
    if isinstance(h, bool):
        return None
    try:
        return operator.index(h)
    except TypeError:
        return None


def _check_keep(keep: list[int], num_heads: int) -> list[int]:
    idx = [_as_index(h) for h in keep]
    bad = [h for h, i in zip(keep, idx, strict=True) if i is None or not 0 <= i < num_heads]
    if bad:
        raise ValueError(f"head indices {bad} out of range for an attention with {num_heads} heads")
    if len(set(idx)) != len(idx):
        raise ValueError(f"duplicate head indices in keep={keep}")
    return sorted(idx)  # type: ignore[arg-type]


def _slice_linear(lin: nn.Linear, index: Tensor, dim: int) -> None:
    """Keep only `index` along `dim` of the weight (0 = output rows, 1 = input columns), in place.

    In place (not a new nn.Linear) so module identity and hooks survive and no zero-size
    init warning is raised when every head goes.
    """
    weight = lin.weight.detach().index_select(dim, index).clone()
    lin.weight = nn.Parameter(weight, requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[index].clone(), requires_grad=lin.bias.requires_grad)
        lin.out_features = weight.shape[0]
    else:
        lin.in_features = weight.shape[1]


def _rows(keep: list[int], num_heads: int, head_dim: int, parts: int, device: torch.device) -> Tensor:
    """Row indices of the kept heads in a projection holding `parts` head-major blocks (q/k/v)."""
    inner = num_heads * head_dim
    rows = [p * inner + h * head_dim + d for p in range(parts) for h in keep for d in range(head_dim)]
    return torch.tensor(rows, dtype=torch.long, device=device)


@torch.no_grad()
def prune_heads(attn: MultiHeadAttention, keep: list[int]) -> MultiHeadAttention:
    """Keep only heads `keep` (indices into the current heads) of `attn`, in place; [] removes all.

    A head_mask or attached gates are sliced along, so the module keeps computing the same.
    """
    h, dh = attn.num_heads, attn.head_dim
    keep = _check_keep(list(keep), h)
    device = attn.out_proj.weight.device
    if attn.cross:
        _slice_linear(attn.q_proj, _rows(keep, h, dh, 1, device), 0)
        _slice_linear(attn.kv_proj, _rows(keep, h, dh, 2, device), 0)
    else:
        _slice_linear(attn.qkv_proj, _rows(keep, h, dh, 3, device), 0)
    _slice_linear(attn.out_proj, _rows(keep, h, dh, 1, device), 1)
    heads = torch.tensor(keep, dtype=torch.long)
    if attn.head_mask is not None:
        mask = attn.head_mask
        attn.head_mask = mask[heads.to(mask.device)] if mask.dim() == 1 else mask[:, heads.to(mask.device)]
    gates = getattr(attn, GATES_ATTR, None)
    if gates is not None:
        la = gates.log_alpha
        gates.log_alpha = nn.Parameter(la.detach()[heads.to(la.device)].clone(), requires_grad=la.requires_grad)
    original = kept_heads(attn)
    setattr(attn, KEPT_ATTR, [original[i] for i in keep])
    attn.num_heads = len(keep)
    return attn


def _check_plan(mods: dict[str, list[MultiHeadAttention]], plan: HeadPlan) -> None:
    for kind, layers in plan.items():
        if len(layers) != len(mods[kind]):
            raise ValueError(f"plan for {kind} has {len(layers)} layers, the model has {len(mods[kind])}")


def prune_model(model: nn.Module, plan: HeadPlan) -> nn.Module:
    """Prune every attention type in `plan` ({type: [heads to keep, per layer]}), in place.

    Indices refer to each attention's current heads (as produced by `heads_to_keep`). All
    indices are validated before anything is cut, so a bad plan leaves the model unchanged.
    """
    check_types(list(plan))
    mods = attention_modules(model, list(plan))
    _check_plan(mods, plan)
    for kind, layers in plan.items():
        for i, (attn, keep) in enumerate(zip(mods[kind], layers, strict=True)):
            try:
                _check_keep(list(keep), attn.num_heads)
            except ValueError as err:
                raise ValueError(f"{kind} layer {i}: {err}") from None
    for kind, layers in plan.items():
        for attn, keep in zip(mods[kind], layers, strict=True):
            prune_heads(attn, list(keep))
    return model


def _count(amount: int | float, total: int, what: str) -> int:
    """Number of heads to prune from an absolute count or a fraction of `total`."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"{what}: prune amount must be an int (heads) or a float fraction, got {amount!r}")
    if isinstance(amount, float):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"{what}: fraction {amount} is outside [0, 1]")
        return math.floor(amount * total + 0.5)  # round half up (Python's round() goes to even)
    if not 0 <= amount <= total:
        raise ValueError(f"{what}: cannot prune {amount} heads, there are only {total}")
    return amount


def _lowest(scores: dict[str, Tensor], n: int) -> set[tuple[str, int, int]]:
    """(type, layer, head) of the `n` lowest finite scores; ties broken by position (stable)."""
    entries = [
        (float(v), kind, layer, head)
        for kind, s in scores.items()
        for layer in range(s.shape[0])
        for head in range(s.shape[1])
        if not math.isnan(v := float(s[layer, head]))
    ]
    entries.sort(key=lambda e: e[0])  # stable: equal scores go in type/layer/head order
    return {(k, layer, head) for _, k, layer, head in entries[:n]}


def heads_to_keep(importance: dict[str, Tensor], prune: int | float | dict[str, int | float]) -> HeadPlan:
    """Plan {type: [kept head indices per layer]} removing the least important heads.

    `prune` is a number of heads (int) or a fraction (float in [0, 1]) to remove: one value
    ranks all types in `importance` together (global), a {type: amount} dict ranks each type
    separately (types not in the dict keep all heads). NaN scores mark missing heads.
    """
    check_types(list(importance))
    sizes = {k: int((~torch.isnan(s)).sum()) for k, s in importance.items()}
    if isinstance(prune, dict):
        check_types(list(prune))
        missing = [k for k in prune if k not in importance]
        if missing:
            raise ValueError(f"no importance scores for {missing}; scored types are {list(importance)}")
        drop: set[tuple[str, int, int]] = set()
        for kind, amount in prune.items():
            drop |= _lowest({kind: importance[kind]}, _count(amount, sizes[kind], kind))
    else:
        drop = _lowest(importance, _count(prune, sum(sizes.values()), "global"))
    return {
        kind: [
            [h for h in range(s.shape[1]) if not math.isnan(float(s[layer, h])) and (kind, layer, h) not in drop]
            for layer in range(s.shape[0])
        ]
        for kind, s in importance.items()
    }


def head_config(model: nn.Module) -> HeadPlan:
    """{type: [original indices of the remaining heads, per layer]} — store it in checkpoints."""
    return {kind: [kept_heads(a) for a in attns] for kind, attns in attention_modules(model).items()}


def apply_head_config(model: nn.Module, cfg: HeadPlan) -> nn.Module:
    """Cut a (freshly built, dense) model to the head layout `cfg` from `head_config`, in place.

    Afterwards the pruned checkpoint's state_dict loads. Original indices the model no longer
    has, or a layer count that differs, are errors.
    """
    check_types(list(cfg))
    mods = attention_modules(model, list(cfg))
    _check_plan(mods, cfg)
    plan: HeadPlan = {}
    for kind, layers in cfg.items():
        plan[kind] = []
        for i, (attn, wanted) in enumerate(zip(mods[kind], layers, strict=True)):
            have = kept_heads(attn)
            lost = [h for h in wanted if h not in have]
            if lost:
                raise ValueError(f"{kind} layer {i}: heads {lost} are not in the model (it has {have})")
            plan[kind].append([have.index(h) for h in wanted])
    return prune_model(model, plan)
