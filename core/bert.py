"""BERT encoder on the shared core, read top to bottom.

Embeddings (word + position + token type, then LayerNorm and dropout) feed a stack of
`core.layers.EncoderLayer` in post-norm/GELU form, which is exactly a BERT layer. The
architecture comes from a Hugging Face style `config.json`; `core.hf_import` maps pretrained
tensors onto it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from core.attention import key_mask
from core.layers import EncoderLayer


@dataclass
class BertConfig:
    """The architecture fields of a HF BERT `config.json` (defaults: bert-base)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02

    @classmethod
    def from_dict(cls, values: dict) -> BertConfig:
        """Build from a config dict; keys that do not change the encoder (architectures, ...) are ignored."""
        # Relative position embeddings would silently compute something else: refuse them.
        kind = values.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type={kind!r} is not supported (only 'absolute')")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a HF `config.json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        """Plain dict (JSON-able), e.g. for hyperparameters."""
        return asdict(self)


class BertEmbeddings(nn.Module):
    """word + position + token-type (+ optional extra) embeddings -> LayerNorm -> dropout."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # HF name, eases import
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, extra_embeddings: Tensor | None = None
    ) -> Tensor:
        """(B, T) ids -> (B, T, hidden). `extra_embeddings` (B, T, hidden) is added before the norm."""
        t = input_ids.shape[1]
        if t > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence of {t} tokens exceeds max_position_embeddings="
                             f"{self.position_embeddings.num_embeddings}")
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:t]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if extra_embeddings is not None:
            x = x + extra_embeddings
        return self.dropout(self.LayerNorm(x))


class BertModel(nn.Module):
    """BERT encoder: embeddings + post-norm GELU encoder layers (no pooler, no MLM head)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(
            EncoderLayer(
                cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                dropout=cfg.hidden_dropout_prob, attn_dropout=cfg.attention_probs_dropout_prob,
                act=cfg.hidden_act, pre_norm=False, eps=cfg.layer_norm_eps,
            )
            for _ in range(cfg.num_hidden_layers)
        )
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (normal(0, initializer_range)), used when training from scratch."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.cfg.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        extra_embeddings: Tensor | None = None,
        all_hidden_states: bool = False,
    ) -> Tensor | list[Tensor]:
        """Encode (B, T) ids; `attention_mask` (B, T) is 1/True for real tokens.

        Returns the last hidden state (B, T, hidden), or with `all_hidden_states` the list
        [embeddings, layer 1, ..., layer L] like HF's `hidden_states`.
        """
        # Without padding, no mask lets SDPA take its fastest kernel (an exported graph always applies it).
        mask = None
        if attention_mask is not None and (torch.compiler.is_exporting() or not bool(attention_mask.all())):
            mask = key_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids, extra_embeddings)
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        return states if all_hidden_states else x
