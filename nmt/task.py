"""The translation task for task-agnostic pipelines (`core.tasks`): load, score, measure a TranslationModule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.tasks import EvalOptions, Task, register_task
from nmt.data import ParallelSplit, collate, read_parallel
from nmt.module import TranslationModule
from nmt.translate import evaluate_file


@register_task
class TranslationTask(Task):
    """Seq2seq translation: Taylor scoring on parallel text, BLEU/chrF quality, teacher-forced timing."""

    name = TranslationModule.task_name
    module_class = TranslationModule
    score_files = ("source text", "reference text")
    eval_files = ("source text", "reference text")
    same_entries = ("vocab",)
    training_only_hparams = frozenset({
        "optimizer", "scheduler", "label_smoothing", "gates", "init_from", "kd", "decoding", "num_samples",
    })

    def network(self, module: TranslationModule) -> nn.Module:
        """The seq2seq transformer."""
        return module.model

    def scoring_batches(self, module: TranslationModule, files: Sequence[Path], limit: int,
                        batch_size: int) -> list[dict]:
        """Teacher-forcing batches of the first `limit` pairs of (source, reference)."""
        src, ref = self.check_files(files, self.score_files, "taylor scoring")
        s, t, _ = read_parallel(src, ref)
        s, t = s[:limit], t[:limit]
        split = ParallelSplit("score", module.vocab.encode_src(s), module.vocab.encode_tgt(t), s, t)
        rows = list(range(len(split)))
        return [collate(split, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]

    def loss(self, module: TranslationModule, batch: dict) -> Tensor:
        """Mean token cross-entropy (no smoothing) on a teacher-forcing batch."""
        logits = module.model(batch["src"], batch["tgt_in"])
        return F.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=module.cfg.pad_id)

    def quality(self, module: TranslationModule, files: Sequence[Path], options: EvalOptions) -> dict:
        """sacreBLEU BLEU / chrF (with signatures) and sentences/s of decoding `source` against `reference`."""
        src, ref = self.check_files(files, self.eval_files, "quality")
        with torch.no_grad():
            result = evaluate_file(module, src, ref, options.beam_size)
        result.pop("hypotheses")
        return result

    def timed_network(self, module: TranslationModule) -> nn.Module:
        """The seq2seq transformer, fed (source ids, target-input ids)."""
        return module.model

    def example_inputs(self, module: TranslationModule, batch_size: int, seq_len: int, seed: int) -> tuple:
        """Random (source, target-input) ids of `seq_len` tokens, special ids left out."""
        gen = torch.Generator().manual_seed(seed)
        high = module.cfg.vocab_size
        return (torch.randint(4, high, (batch_size, seq_len), generator=gen),
                torch.randint(4, high, (batch_size, seq_len), generator=gen))

    def count_tokens(self, inputs: tuple) -> int:
        """Target tokens: FLOPs and speed are per generated token."""
        return inputs[-1].numel()

    def onnx_graphs(self, module: TranslationModule) -> list:
        """The encoder graph and the decoder-step graph (`nmt.onnx`)."""
        from nmt.onnx import onnx_graphs

        return onnx_graphs(module.model)

    def attach_onnx(self, module: TranslationModule, path: Path) -> None:
        """`module.model` becomes the ONNX Runtime encoder + decoder step, so `translate` searches on them."""
        from nmt.onnx import OnnxSeq2Seq

        module.model = OnnxSeq2Seq(module.cfg, path)
