"""Sentence encoder LightningModule: BERT + pooling (+ L2 norm), STS evaluation and embedding distillation.

A sentence embedding is the mean of the last hidden states over real tokens (as
all-MiniLM-L6-v2; `pooling: cls` takes the [CLS] state instead), L2-normalised when
`normalize`. Validation scores each STS file of the datamodule (one dataloader per language):
Spearman x 100 between the cosine of the two embeddings and the gold score, logged as
`val/spearman_<lang>`.

Distillation (`kd: EmbeddingKD`; its `teacher` is a HF BERT folder, encoded with the same pooling, or a
SentenceEncoderModule checkpoint) pulls the student's pooled embedding (before normalisation)
to the teacher's: `mse_weight` * MSE + `cosine_weight` * (1 - cosine) (+ `similarity_weight` * MSE of the
in-batch cosine matrices, the geometry STS reads), plus with
`hidden_weight` > 0 an MSE between student layer l and teacher layer round(l * L_t / L_s)
hidden states over real tokens. Batches with target sentences (parallel data, seed 003) add
the same loss for student(target) against teacher(source). The teacher is deterministic in
eval mode, so its embeddings of the training sentences are computed once (`teacher_cache`,
set by `on_fit_start` or by the caller) and epochs cost only the student; hidden-state
alignment needs the teacher in every step.

Checkpoints are self-contained: the tokenizer JSON, the resolved config (`core.config`: BERT
config, no teacher) and the compression spec (pruned heads / FFN neurons) are stored, so
`load_module(SentenceEncoderModule, path)` works alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import LightningModule
from scipy.stats import spearmanr
from torch import Tensor, nn
from typing_extensions import override

from compression.distill import freeze_teacher, hidden_state_loss
from compression.spec import CompressionHooks
from compression.student import attach_teacher, get_teacher, keep_bert_layers
from core.bert import BertConfig, BertModel
from core.bert_task import BertTask
from core.config import ResolvedConfig, load_module
from core.hf_import import check_vocab_size, default_checkpoint_dir, load_bert
from core.metrics import GatheredRows
from core.optim import OptimizerConfig, SchedulerConfig, as_dataclass, configure
from sts.data import SentenceSpec, tokenize

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class EmbeddingKD:
    """Embedding distillation from `teacher` (a HF BERT folder or a SentenceEncoderModule checkpoint; None:
    the caller attaches an in-memory teacher): mse_weight * MSE + cosine_weight * (1 - cosine) of the pooled
    embeddings, + similarity_weight * MSE of the in-batch cosine matrices, + hidden_weight * MSE of aligned
    hidden states."""

    teacher: str | None = None
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    hidden_weight: float = 0.0
    similarity_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.mse_weight, self.cosine_weight, self.hidden_weight, self.similarity_weight) < 0:
            raise ValueError("kd.mse_weight, kd.cosine_weight, kd.hidden_weight and kd.similarity_weight must be >= 0")


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str = "mean") -> Tensor:
    """(B, T, d) hidden states -> (B, d): mean over real tokens (mask 1), or the first ([CLS]) state."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def spearman_x100(predicted: Tensor | list[float], gold: Tensor | list[float]) -> float:
    """Spearman rank correlation x 100 (scipy.stats.spearmanr, ties averaged)."""
    return float(spearmanr(torch.as_tensor(predicted).tolist(), torch.as_tensor(gold).tolist()).statistic * 100)


def _spearman_of_rows(rows: Tensor) -> dict[str, float]:
    return {"spearman": spearman_x100(rows[:, 0], rows[:, 1]), "pairs": float(len(rows))}


def _spearman_metric() -> GatheredRows:
    """Spearman x 100 of gathered (predicted, gold) rows."""
    return GatheredRows(2, _spearman_of_rows)


def cosine_matrix(embeddings: Tensor) -> Tensor:
    """(B, d) -> (B, B) cosine similarity of every pair of rows."""
    unit = F.normalize(embeddings, dim=-1)
    return unit @ unit.T


def reinitialise(bert: BertModel) -> BertModel:
    """Fresh BERT initialisation of every weight, keeping the (possibly pruned) shapes: a random-init student."""
    for module in bert.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    bert.apply(bert._init_weights)
    return bert


class SentenceEncoderModule(ResolvedConfig, BertTask, CompressionHooks, LightningModule):
    """BERT sentence encoder trained by embedding distillation (`kd`) and scored on STS.

    `checkpoint_dir` is a HF BERT folder (None: the packaged all-MiniLM-L6-v2); `bert_config`
    builds that architecture with fresh weights instead (tiny tests, reloading our checkpoints).
    `keep_layers` (e.g. [0, 2, 4]) keeps only those encoder layers (DistilBERT-style layer
    dropping) at construction. `init_from` starts from a checkpoint's weights and shape.
    `optimizer` / `scheduler` are `core.optim`'s.
    """

    task_name = "sts"  # recorded in every checkpoint (`core.tasks`)

    def __init__(
        self, checkpoint_dir: str | None = None, bert_config: dict | None = None, pooling: str = "mean",
        normalize: bool = True, data_spec: SentenceSpec | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.01),
        scheduler: SchedulerConfig | None = None, kd: EmbeddingKD | None = None, keep_layers: list[int] | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.save_hyperparameters()
        self.optimizer_config = as_dataclass(OptimizerConfig, optimizer)
        self.scheduler_config = as_dataclass(SchedulerConfig, scheduler)
        self.kd: EmbeddingKD = as_dataclass(EmbeddingKD, kd) or EmbeddingKD()  # the loss weights, teacher or not
        spec = as_dataclass(SentenceSpec, data_spec) or SentenceSpec()
        if bert_config is None:
            folder = checkpoint_dir or str(default_checkpoint_dir())
            self.bert = load_bert(folder)
            spec = replace(spec, tokenizer=spec.tokenizer or folder)
        else:
            self.bert = BertModel(BertConfig.from_dict(bert_config))
        self.data_spec: SentenceSpec = spec
        if keep_layers is not None:
            keep_bert_layers(self.bert, keep_layers)
        self.max_length = spec.max_length
        self.teacher_cache: Tensor | None = None
        # (cosine, gold) pairs of every process per validation language: sharded validation is exact.
        self.eval_pairs = nn.ModuleDict({lang: _spearman_metric() for lang in spec.languages})
        self.init_compression(init_from)
        attach_teacher(self, self._load_teacher(self.kd.teacher) if self.kd.teacher else None)

    @override
    def architecture_hparams(self) -> dict:
        """The encoder as built (folder config, kept layers applied) and the resolved tokenizer."""
        return {"bert_config": self.bert.cfg.to_dict(), "checkpoint_dir": None, "keep_layers": None,
                "data_spec": asdict(self.data_spec)}

    def _load_teacher(self, path: str) -> SentenceEncoderModule:
        if Path(path).is_dir():
            teacher = SentenceEncoderModule(checkpoint_dir=path, pooling=self.hparams.pooling)
        elif Path(path).is_file():
            teacher = load_module(SentenceEncoderModule, path, kd=None)
        else:
            raise ValueError(f"teacher {path!r} is neither a HF BERT folder nor a checkpoint file")
        return freeze_teacher(teacher)

    @property
    def teacher(self) -> SentenceEncoderModule | None:
        """The frozen teacher (not a registered submodule), or None."""
        return get_teacher(self)  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        """Check that the tokenizer fits the embeddings and that teacher and student tokenize alike."""
        check_vocab_size(self.tokenizer, self.bert)
        check_same_tokenizer(self.teacher, self)

    def embed(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> Tensor | tuple:
        """Pooled embedding before normalisation (B, d); with `hidden`, also all hidden states."""
        states = self.bert(input_ids, attention_mask, all_hidden_states=True)
        pooled = pool(states[-1], attention_mask, self.hparams.pooling)
        return (pooled, states) if hidden else pooled

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Sentence embeddings (B, d), L2-normalised when `normalize`."""
        pooled = self.embed(input_ids, attention_mask)
        return F.normalize(pooled, dim=-1) if self.hparams.normalize else pooled

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 128, normalized: bool = True) -> Tensor:
        """Embeddings of raw sentences (N, d) on CPU, in eval mode (restored after); `normalized=False`
        returns the pooled embedding before normalisation (what distillation matches)."""
        was_training = self.training
        self.eval()
        # Batches of similar length waste little on padding; rows go back to the input order.
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = torch.zeros(len(sentences), self.bert.cfg.hidden_size)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenize(self.tokenizer, [sentences[i] for i in rows], self.max_length)
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            out[rows] = (self(ids, mask) if normalized else self.embed(ids, mask)).float().cpu()
        self.train(was_training)
        return out

    def on_fit_start(self) -> None:
        """Print the parameter count; freeze the teacher and cache its embeddings of the training sentences."""
        if self.teacher is None:
            return
        freeze_teacher(self.teacher.to(self.device))
        sentences = getattr(self.trainer.datamodule, "sentences", None)
        if self.teacher_cache is None and sentences:
            self.print(f"[kd] caching teacher embeddings of {len(sentences):,} sentences")
            self.teacher_cache = self.teacher.encode(sentences, normalized=False)
        if self.teacher_cache is not None and sentences and len(self.teacher_cache) != len(sentences):
            raise ValueError(f"teacher_cache has {len(self.teacher_cache)} rows for {len(sentences)} sentences")

    def distill_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        """mse_weight * MSE + cosine_weight * mean(1 - cosine) between (B, d) embeddings, plus
        similarity_weight * MSE between the in-batch cosine matrices (B, B) of student and teacher:
        STS reads only cosines between sentences, so this term trains exactly that geometry."""
        loss, kd = student.new_zeros(()), self.kd
        if kd.mse_weight:
            loss = loss + kd.mse_weight * F.mse_loss(student, teacher)
        if kd.cosine_weight:
            loss = loss + kd.cosine_weight * (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        if kd.similarity_weight:
            loss = loss + kd.similarity_weight * F.mse_loss(cosine_matrix(student), cosine_matrix(teacher))
        return loss

    def _teacher_targets(self, batch: dict[str, Tensor]) -> tuple[Tensor, list[Tensor] | None]:
        teacher = self.teacher
        if teacher is None:
            raise ValueError("SentenceEncoderModule needs a teacher (kd.teacher) to train: embedding distillation")
        if self.kd.hidden_weight or self.teacher_cache is None:
            with torch.no_grad():
                pooled, states = teacher.embed(batch["input_ids"], batch["attention_mask"], hidden=True)
            return pooled, states
        return self.teacher_cache[batch["index"].cpu()].to(self.device), None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Distillation loss for the batch (+ target sentences against the source's teacher embedding)."""
        target, teacher_states = self._teacher_targets(batch)
        pooled, states = self.embed(batch["input_ids"], batch["attention_mask"], hidden=True)
        loss = self.distill_loss(pooled, target)
        if teacher_states is not None and self.kd.hidden_weight:
            loss = loss + self.kd.hidden_weight * hidden_state_loss(states, teacher_states, batch["attention_mask"])
        if "target_input_ids" in batch:
            loss = loss + self.distill_loss(self.embed(batch["target_input_ids"], batch["target_attention_mask"]),
                                            target)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    @override
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        cosine = F.cosine_similarity(self.embed(**batch["a"]), self.embed(**batch["b"]), dim=-1)
        languages = self.data_spec.languages
        name = languages[dataloader_idx] if dataloader_idx < len(languages) else str(dataloader_idx)
        if name not in self.eval_pairs:  # loaders the data spec did not name (one process: nothing to sync)
            self.eval_pairs[name] = _spearman_metric().to(self.device)
        self.eval_pairs[name].update(torch.stack([cosine.float(), batch["score"].float()], dim=1))

    @override
    def on_validation_epoch_end(self) -> None:
        scores = {}
        for name, metric in self.eval_pairs.items():
            scores |= {f"val/{key}_{name}": v for key, v in metric.compute().items()}
            metric.reset()
        if scores:
            self.log_dict(scores)
            self.log("hp_metric", next(v for k, v in scores.items() if k.startswith("val/spearman_")))

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """`core.optim.configure` over the encoder."""
        return configure(self, self.optimizer_config, self.scheduler_config,
                         callbacks=self.trainer.callbacks if self._trainer is not None else ())


def check_same_tokenizer(teacher: SentenceEncoderModule | None, student: SentenceEncoderModule) -> None:
    """A clear ValueError when teacher and student tokenize differently (distillation would compare other inputs)."""
    if teacher is not None and teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise ValueError("teacher and student use different tokenizer vocabularies: embedding distillation "
                         "needs both to read the same sub-tokens (use the teacher's tokenizer for the student)")


def sts_regression_loss(module: SentenceEncoderModule, batch: dict) -> Tensor:
    """MSE between cosine(u, v) and score / 5: the supervised signal used to score heads and neurons."""
    cosine = F.cosine_similarity(module.embed(**batch["a"]), module.embed(**batch["b"]), dim=-1)
    return F.mse_loss(cosine, batch["score"] / 5.0)


def evaluate_sts(model: SentenceEncoderModule, pairs: list, batch_size: int = 128) -> float:
    """Spearman x 100 of cosine(embedding1, embedding2) vs gold scores over STSPair `pairs`."""
    a = model.encode([p.sentence1 for p in pairs], batch_size)
    b = model.encode([p.sentence2 for p in pairs], batch_size)
    return spearman_x100((a * b).sum(-1), [p.score for p in pairs])
