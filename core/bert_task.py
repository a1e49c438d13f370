"""What every LightningModule around a BERT encoder shares: its tokenizer, carried in the checkpoint."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn

from core.hf_import import load_tokenizer


class BertTask:
    """Mixin for LightningModules with `self.bert` and `self.data_spec.tokenizer`.

    The tokenizer is loaded lazily from the data spec, written into every checkpoint and read
    back from it, so a checkpoint works without the tokenizer folder it was trained with.
    `self.bert` is the network that compression surgery (`compression.spec`) works on.
    """

    _tokenizer: Tokenizer | None = None

    def compressible_network(self) -> nn.Module:
        """The BERT encoder: heads, FFNs, embeddings and layers that compression changes."""
        return self.bert

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer from the checkpoint, else from `data_spec.tokenizer`."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.data_spec.tokenizer)
        return self._tokenizer

    def save_tokenizer(self, checkpoint: dict) -> None:
        """Store the tokenizer (as tokenizer.json text) in `checkpoint`."""
        checkpoint["tokenizer_json"] = self.tokenizer.to_str()

    def restore_tokenizer(self, checkpoint: dict) -> None:
        """Use the tokenizer stored in `checkpoint`."""
        self._tokenizer = Tokenizer.from_str(checkpoint["tokenizer_json"])


def random_bert_inputs(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> tuple:
    """Seeded (ids, all-ones mask) of a BERT encoder for timing and export; ids above 1000 (past the special
    and unused tokens) in a real vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab_size > 2000 else 1, vocab_size, (batch_size, seq_len), generator=gen)
    return ids, torch.ones_like(ids)
