"""The sentence-encoder task for task-agnostic pipelines (`core.tasks`): load, score, measure a
SentenceEncoderModule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from core.bert_task import BertEncoderTask
from core.tasks import EvalOptions, register_task
from sts.data import collate_pairs, read_sts
from sts.module import SentenceEncoderModule, evaluate_sts, sts_regression_loss


@register_task
class SentenceEncodingTask(BertEncoderTask):
    """Sentence embeddings: Taylor scoring by the STS regression loss on labelled pairs, STS Spearman quality."""

    name = SentenceEncoderModule.task_name
    module_class = SentenceEncoderModule
    score_files = ("STS CSV (sentence1,sentence2,score)",)
    eval_files = ("STS CSV (sentence1,sentence2,score)",)
    training_only_hparams = frozenset({
        "optimizer", "scheduler", "kd", "init_from", "checkpoint_dir", "keep_layers", "tokenizer", "max_length",
        "languages",
    })
    onnx_output = "embeddings"  # pooled (and, if the model normalises, unit-length) sentence embeddings

    def scoring_batches(self, module: SentenceEncoderModule, files: Sequence[Path], limit: int,
                        batch_size: int) -> list[dict]:
        """STS batches of the first `limit` scored pairs."""
        (csv,) = self.check_files(files, self.score_files, "taylor scoring")
        pairs = read_sts(csv)[:limit]
        return [collate_pairs(module.tokenizer, pairs[i : i + batch_size], module.max_length)
                for i in range(0, len(pairs), batch_size)]

    def loss(self, module: SentenceEncoderModule, batch: dict) -> Tensor:
        """MSE between cosine(u, v) and score / 5."""
        return sts_regression_loss(module, batch)

    def quality(self, module: SentenceEncoderModule, files: Sequence[Path], options: EvalOptions) -> dict:
        """Spearman x 100 of cosine vs gold score on an STS file."""
        (csv,) = self.check_files(files, self.eval_files, "quality")
        pairs = read_sts(csv)
        return {"spearman": evaluate_sts(module, pairs, options.batch_size), "pairs": len(pairs)}
