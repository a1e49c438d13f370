"""Encoder-decoder transformer for translation, read top to bottom.

Joint source/target vocabulary with one embedding table shared by the encoder, the decoder
and the output projection (tied embeddings). `encode` and `decode` are split so that search
can run the encoder once and the decoder step by step with key/value caches.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from core.attention import key_mask
from core.layers import DecoderLayer, EncoderLayer, ScaledEmbedding


@dataclass
class Seq2SeqConfig:
    """Architecture of the translation transformer (seed 004 small base by default)."""

    vocab_size: int = 8000  # shared source/target pieces (`nmt.vocab.VocabSpec` overrides it from the data)
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    # dropout on sub-layer outputs / attention probabilities / FFN activations
    dropout: float = 0.1
    attn_dropout: float = 0.0
    act_dropout: float = 0.0
    activation: str = "relu"
    pre_norm: bool = True  # LayerNorm before each sub-layer (stable without warm-up tricks)
    max_len: int = 512
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3


class Seq2SeqTransformer(nn.Module):
    """Transformer encoder-decoder with tied embeddings and cache-aware decoding."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = ScaledEmbedding(cfg.vocab_size, cfg.d_model, cfg.pad_id, cfg.dropout, cfg.max_len)
        layer_args = dict(
            d_model=cfg.d_model, num_heads=cfg.num_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout, act=cfg.activation, pre_norm=cfg.pre_norm,
            act_dropout=cfg.act_dropout,
        )
        self.encoder = nn.ModuleList(EncoderLayer(**layer_args) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**layer_args) for _ in range(cfg.decoder_layers))
        # Pre-norm stacks need a final norm; post-norm layers already end in one.
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        # None while tied; `untie_output_projection` (int8 deployment) sets an own linear.
        self.output_projection: nn.Linear | None = None
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("embed."):
                nn.init.xavier_uniform_(p)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Source ids (B, S) -> memory (B, S, d) and its boolean key mask (B, 1, 1, S)."""
        mask = key_mask(src != self.cfg.pad_id)
        x = self.embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(
        self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor,
        cache: list[dict] | None = None, offset: int = 0,
    ) -> Tensor:
        """Target-side ids (B, T) -> next-token logits (B, T, V).

        With `cache` (one dict per decoder layer, filled in place) only the new positions
        are passed; `offset` is the number of positions already in the cache.
        """
        x = self.embed(tgt_in, offset=offset)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, memory_mask, cache[i] if cache is not None else None)
        return self.project(self.decoder_norm(x))

    def project(self, hidden: Tensor) -> Tensor:
        """Output logits through the tied embedding matrix (or its untied copy)."""
        if self.output_projection is not None:
            return self.output_projection(hidden)
        return hidden @ self.embed.tokens.weight.t()

    def untie_output_projection(self) -> None:
        """Give the output projection its own copy of the embedding matrix, as an `nn.Linear`.

        For inference only: int8 quantisation (`compression.quantize`) quantises linear layers, and the
        projection to the vocabulary is the largest matrix product of a decoder step."""
        if self.output_projection is None:
            weight = self.embed.tokens.weight
            self.output_projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False,
                                               device=weight.device, dtype=weight.dtype)
            self.output_projection.weight.data.copy_(weight.detach())

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for source ids and shifted target ids."""
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    def new_cache(self) -> list[dict]:
        """Empty per-layer key/value caches for incremental decoding."""
        return [{} for _ in self.decoder]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())



