"""Transformer building blocks: feed-forward, encoder and decoder layers, embeddings.

Layers are pre-norm or post-norm (`pre_norm`), ReLU or GELU; the same EncoderLayer in
post-norm/GELU form is a BERT layer, so NMT, NER and compression share one implementation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from core.attention import KVCache, MultiHeadAttention

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """The activation module called `name` ('relu' or 'gelu')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """Position-wise FFN: fc1 -> activation -> dropout -> fc2. Neurons are fc1 rows / fc2 columns."""

    def __init__(self, d_model: int, d_ff: int, act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class _Sublayer(nn.Module):
    """Residual wrapper around one sub-block with pre- or post-layer-norm."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, block) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(block(self.norm(x)))
        return self.norm(x + self.dropout(block(x)))


class _ResidualLayer(nn.Module):
    """What encoder and decoder layers share: self-attention (+ cross-attention in a decoder) and an FFN,
    built in that order (parameter order fixes the initialisation drawn from a seed), and their residual
    sublayers."""

    def __init__(
        self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1,
        attn_dropout: float = 0.0, act: str = "relu", pre_norm: bool = True, eps: float = 1e-5,
        head_dim: int | None = None, act_dropout: float = 0.0, cross: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, head_dim, attn_dropout)
        if cross:
            self.cross_attn = MultiHeadAttention(d_model, num_heads, head_dim, attn_dropout, cross=True)
        self.ffn = FeedForward(d_model, d_ff, act, act_dropout)
        self._sublayer_args = (d_model, dropout, pre_norm, eps)

    def sublayer(self) -> _Sublayer:
        """A residual sublayer (norm + dropout) of this layer's width."""
        return _Sublayer(*self._sublayer_args)


class EncoderLayer(_ResidualLayer):
    """Self-attention + FFN, each in a residual sublayer (arguments: `_ResidualLayer`'s, no `cross`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attn_block = self.sublayer()
        self.ffn_block = self.sublayer()

    @override
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(_ResidualLayer):
    """Causal self-attention + cross-attention + FFN, with incremental decoding caches (arguments:
    `_ResidualLayer`'s, no `cross`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, cross=True)
        self.self_block = self.sublayer()
        self.cross_block = self.sublayer()
        self.ffn_block = self.sublayer()

    @override
    def forward(
        self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
        cache: dict[str, KVCache] | None = None,
    ) -> Tensor:
        self_cache = cache.setdefault("self", {}) if cache is not None else None
        cross_cache = cache.setdefault("cross", {}) if cache is not None else None
        x = self.self_block(x, lambda h: self.self_attn(h, is_causal=True, cache=self_cache))
        x = self.cross_block(
            x, lambda h: self.cross_attn(h, memory, mask=memory_mask, cache=cross_cache)
        )
        return self.ffn_block(x, self.ffn)


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """The (max_len, d_model) sine/cosine position table of Vaswani et al. (2017)."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table


class ScaledEmbedding(nn.Module):
    """Token embedding x sqrt(d) plus fixed sinusoidal positions, then dropout.

    `weight` is shared with the output projection when embeddings are tied.
    """

    def __init__(self, vocab_size: int, d_model: int, pad_id: int, dropout: float, max_len: int = 1024):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, std=d_model**-0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    @override
    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        t = ids.shape[1]
        if offset + t > self.positions.shape[0]:
            raise ValueError(f"sequence of {offset + t} tokens exceeds max_len={self.positions.shape[0]}")
        return self.dropout(self.tokens(ids) * self.scale + self.positions[offset : offset + t])
