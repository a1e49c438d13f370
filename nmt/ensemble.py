"""Ensembles of translation models: one search over the averaged next-token distribution of several checkpoints.

    python -m nmt.translate --ckpt seed1/swa.ckpt seed2/swa.ckpt seed3/swa.ckpt --input test.en ...

Members must share the vocabulary (the same SentencePiece pieces and special ids); they may differ in width,
depth and heads. `EnsembleModel` is a drop-in `model` for `nmt.search`: `encode` concatenates the members'
memories along the feature axis, so the search's row selection of the memory (finished sentences leaving the
batch, beams expanded) applies to every member at once, and `new_cache` chains the members' per-layer caches,
so reordering beams reorders all of them. `decode` returns the log of the mean of the members' probabilities
(fairseq's ensemble rule), already normalised, which the search's log-softmax leaves unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from nmt.model import Seq2SeqTransformer
from nmt.module import TranslationModule

_SHARED_FIELDS = ("vocab_size", "pad_id", "bos_id", "eos_id")


class EnsembleModel(nn.Module):
    """Several `Seq2SeqTransformer`s behind the interface of one (encode / decode / new_cache / cfg)."""

    def __init__(self, members: Sequence[Seq2SeqTransformer]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0].cfg
        for i, member in enumerate(members[1:], start=1):
            for field in _SHARED_FIELDS:
                if getattr(member.cfg, field) != getattr(first, field):
                    raise ValueError(f"ensemble member {i} has {field}={getattr(member.cfg, field)}, member 0 "
                                     f"{getattr(first, field)}: members must share one vocabulary")
        self.members = nn.ModuleList(members)
        self.cfg = replace(first, max_len=min(member.cfg.max_len for member in members))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Source ids (B, S) -> the members' memories side by side (B, S, sum of d_model) and the key mask."""
        encoded = [member.encode(src) for member in self.members]
        return torch.cat([memory for memory, _ in encoded], dim=-1), encoded[0][1]

    def new_cache(self) -> list[dict]:
        """The members' per-layer caches, chained in member order."""
        return [layer for member in self.members for layer in member.new_cache()]

    def decode(
        self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor,
        cache: list[dict] | None = None, offset: int = 0,
    ) -> Tensor:
        """Target-side ids (B, T) -> log of the members' mean next-token probabilities (B, T, V), float32."""
        memories = memory.split([member.cfg.d_model for member in self.members], dim=-1)
        log_probs, first_layer = [], 0
        for member, member_memory in zip(self.members, memories, strict=True):
            layers = len(member.decoder)
            member_cache = cache[first_layer:first_layer + layers] if cache is not None else None
            first_layer += layers
            logits = member.decode(tgt_in, member_memory, memory_mask, member_cache, offset)
            log_probs.append(torch.log_softmax(logits.float(), dim=-1))
        return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced ensemble log-probabilities (B, T, V)."""
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


def ensemble_translator(modules: Sequence[TranslationModule], paths: Sequence[str | Path]) -> TranslationModule:
    """The first module, its network replaced by the ensemble of all modules' networks (for translation and
    `Trainer.test`, not for training); its decoding options apply. `paths` name the modules in errors."""
    first = modules[0]
    for module, path in zip(modules, paths, strict=True):
        if not isinstance(module.model, Seq2SeqTransformer):
            raise ValueError(f"{path}: only PyTorch checkpoints of a Seq2SeqTransformer can join an ensemble")
    for module, path in zip(modules[1:], paths[1:], strict=True):
        if module.vocab.to_state() != first.vocab.to_state():
            raise ValueError(f"{path} has another vocabulary than {paths[0]}: ensemble members must be trained "
                             "on the same SentencePiece model")
    first.model = EnsembleModel([module.model for module in modules])
    return first.eval()
