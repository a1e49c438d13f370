"""Find a model's attention modules, grouped by attention type.

The type of a `MultiHeadAttention` follows from where it sits in the module tree: inside a
`BertModel` it is 'bert_self'; otherwise inside an `EncoderLayer` it is 'encoder_self' and
inside a `DecoderLayer` 'decoder_self' or 'decoder_cross' (by its `cross` flag). Walking the
tree this way finds the attentions of a bare model and of any wrapper (LightningModule,
distillation pair, ...) without knowing the wrapper's attribute names.
"""

from __future__ import annotations

from torch import nn

from core.attention import MultiHeadAttention
from core.bert import BertModel
from core.layers import DecoderLayer, EncoderLayer

ATTENTION_TYPES = ("encoder_self", "decoder_self", "decoder_cross", "bert_self")


def check_types(types: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError for any name not in ATTENTION_TYPES."""
    bad = [t for t in types if t not in ATTENTION_TYPES]
    if bad:
        raise ValueError(f"unknown attention type(s) {bad}; valid types are {list(ATTENTION_TYPES)}")


def _walk(
    module: nn.Module, family: str | None, name: str, out: dict[str, list[tuple[str, MultiHeadAttention]]]
) -> None:
    if isinstance(module, BertModel):
        family = "bert"
    elif isinstance(module, EncoderLayer) and family != "bert":
        family = "encoder"
    elif isinstance(module, DecoderLayer):
        family = "decoder"
    if isinstance(module, MultiHeadAttention):
        if family is None:  # a bare attention outside any known layer has no type
            return
        kind = f"{family}_{'cross' if module.cross else 'self'}"
        out.setdefault(kind, []).append((name, module))
        return
    for child_name, child in module.named_children():
        _walk(child, family, f"{name}.{child_name}" if name else child_name, out)


def named_attention_modules(
    model: nn.Module, types: list[str] | tuple[str, ...] | None = None
) -> dict[str, list[tuple[str, MultiHeadAttention]]]:
    """{type: [(qualified name, attention), ...]} in layer order (input side first).

    With `types`, only those types; a valid type the model does not have is an error too,
    so a typo in a config never silently selects nothing.
    """
    found: dict[str, list[tuple[str, MultiHeadAttention]]] = {}
    _walk(model, None, "", found)
    if types is None:
        return {t: found[t] for t in ATTENTION_TYPES if t in found}
    check_types(types)
    missing = [t for t in types if t not in found]
    if missing:
        raise ValueError(f"model has no attention of type(s) {missing}; it has {[t for t in found]}")
    return {t: found[t] for t in types}


def attention_modules(
    model: nn.Module, types: list[str] | tuple[str, ...] | None = None
) -> dict[str, list[MultiHeadAttention]]:
    """{type: [attention of layer 0, layer 1, ...]} for `types` (default: all the model has)."""
    return {t: [m for _, m in mods] for t, mods in named_attention_modules(model, types).items()}
