"""The tagging task for task-agnostic pipelines (`core.tasks`): load, score, measure a TaggerModule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from core.bert_task import BertEncoderTask
from core.tasks import EvalOptions, register_task
from ner.align import IGNORE, SentenceEncoder
from ner.conll import read_conll, to_iob2
from ner.data import collate
from ner.module import TaggerModule, score_conll


@register_task
class TaggingTask(BertEncoderTask):
    """Named-entity tagging: Taylor scoring on a CoNLL file, word-level entity F1, timing over sub-token ids."""

    name = TaggerModule.task_name
    module_class = TaggerModule
    score_files = ("CoNLL file",)
    eval_files = ("CoNLL file",)
    training_only_hparams = frozenset({
        "optimizer", "scheduler", "gates", "crf_lr_scale", "embedding_lr_scale", "init_from", "kd", "checkpoint_dir",
        "constrained_decoding",
        "crf",  # a CRF shows in the state-dict keys (crf.*), which must match anyway
        "tokenizer", "schemes",  # data_spec: tokenizer path (its content is `tokenizer_json`), source tag schemes
        "context_tokens", "max_length",  # input windowing: the soup tags with the first file's setting
    })
    onnx_output = "logits"
    onnx_host_prefixes = ("crf.",)  # Viterbi decoding runs in Python on the graph's logits

    def onnx_inputs(self, module: TaggerModule, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """Sub-token ids and mask, and the casing classes when the tagger embeds them."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if module.casing_embed is not None:
            inputs["casing"] = torch.zeros_like(input_ids)
        return inputs

    def scoring_batches(self, module: TaggerModule, files: Sequence[Path], limit: int,
                        batch_size: int) -> list[dict]:
        """Sub-token window batches of the first `limit` sentences of a CoNLL file."""
        (conll,) = self.check_files(files, self.score_files, "taylor scoring")
        sentences, _ = to_iob2(read_conll(conll))
        encoder = SentenceEncoder(module.tokenizer, module.labels, module.max_length)
        examples = [e for i, s in enumerate(sentences[:limit]) for e in encoder(s.tokens, i, s.tags)]
        pad_id = module.tokenizer.token_to_id("[PAD]") or 0
        return [collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]

    def loss(self, module: TaggerModule, batch: dict) -> Tensor:
        """Sub-token cross-entropy over labelled sub-tokens."""
        logits = module(batch["input_ids"], batch["attention_mask"], batch["casing"])
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def quality(self, module: TaggerModule, files: Sequence[Path], options: EvalOptions) -> dict:
        """Word-level entity F1, precision and recall (seqeval) on a CoNLL file."""
        (conll,) = self.check_files(files, self.eval_files, "quality")
        scores = score_conll(module, conll)
        return {k: scores[k] for k in ("f1", "precision", "recall", "sentences")}
