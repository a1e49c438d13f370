"""What every task around a BERT encoder shares: the tokenizer carried in the checkpoint, the checkpoint hooks,
random inputs for timing and export."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from core.hf_import import load_tokenizer
from core.tasks import TASK_KEY, Task


class BertTask:
    """Mixin for LightningModules with `self.bert` and `self.data_spec.tokenizer` (put it before
    LightningModule, after `core.config.ResolvedConfig`, with `compression.spec.CompressionHooks`).

    The tokenizer is loaded lazily from the data spec, written into every checkpoint and read
    back from it, so a checkpoint works without the tokenizer folder it was trained with.
    `self.bert` is the network that compression surgery (`compression.spec`) works on; the
    checkpoint hooks store and restore it with its compression spec.
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The resolved config (`core.config`), the task name, the tokenizer and the compression spec."""
        checkpoint["hyper_parameters"] = self.resolved_hparams()
        checkpoint[TASK_KEY] = self.task_name
        self.save_tokenizer(checkpoint)
        self.save_compression(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The stored tokenizer, and the network reshaped to the stored compression spec."""
        self.restore_tokenizer(checkpoint)
        self.load_compression(checkpoint)

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


class BertEncoderTask(Task):
    """What the tasks around a BERT encoder share (`core.tasks`): checkpoints average only with the same
    tokenizer, and latency / export feed random sub-token ids."""

    same_entries = ("tokenizer_json",)

    def example_inputs(self, module, batch_size: int, seq_len: int, seed: int) -> tuple:
        """Random (sub-token ids, all-ones attention mask); ids above the special-token range of real vocabularies."""
        return random_bert_inputs(module.bert.cfg.vocab_size, batch_size, seq_len, seed)

    # The exported graph's output: the module's forward result (logits of a tagger, a sentence embedding).
    onnx_output: str = "output"

    def onnx_inputs(self, module, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """The named inputs of the module's forward, in order, for a batch of sub-token ids."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def onnx_graphs(self, module) -> list:
        """One graph: the module's forward, dynamic batch and length (traced on a padded batch)."""
        from core.onnx import OnnxGraph

        ids, mask = random_bert_inputs(module.bert.cfg.vocab_size, 2, 7, seed=0)
        mask[1, 4:] = 0
        inputs = self.onnx_inputs(module, ids, mask)
        longest = module.bert.cfg.max_position_embeddings
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=longest)
        return [OnnxGraph(_Forward(module), tuple(inputs.values()), list(inputs), [self.onnx_output],
                          (tuple({0: batch, 1: length} for _ in inputs),))]  # one entry: forward(*args)

    def attach_onnx(self, module, path) -> None:
        """`module(...)` runs the exported graph on ONNX Runtime (the rest of the module is unchanged)."""
        from core.onnx import Session

        ids = torch.zeros(1, 1, dtype=torch.long)
        session = Session(path, list(self.onnx_inputs(module, ids, ids)), f"a {self.name!r} model")
        module.forward = lambda *args: session(*args[:len(session.inputs)])[0]


class _Forward(nn.Module):
    """A LightningModule's forward as a plain module, for `torch.onnx.export`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Tensor) -> Tensor:
        """The wrapped module's forward."""
        return self.module(*args)
