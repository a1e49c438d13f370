"""BERT token-classification LightningModule, scored at word level with seqeval.

A checkpoint is self-contained: the label list and tokenizer location come in through
`data_spec` (`ner.data.TaggingSpec`), the checkpoint's resolved config (`core.config`) holds the
BERT architecture, and the tokenizer itself (its JSON) is stored in the checkpoint, so
`load_module(TaggerModule, path)` tags text without the original folders.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import LightningModule
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from torch import Tensor, nn
from typing_extensions import override

from compression.distill import hidden_state_loss, kd_loss, teacher_logits
from compression.gates import GateConfig
from compression.logit_cache import TeacherLogitCache, row_keys
from compression.spec import CompressionHooks
from compression.student import (
    KDConfig,
    StudentShape,
    attach_teacher,
    get_teacher,
    load_teacher,
    parameter_line,
    prepare_teacher,
    shape_bert_student,
)
from core.batching import LengthBatchSampler
from core.bert import BertConfig, BertModel
from core.bert_task import BertTask
from core.config import ResolvedConfig
from core.hf_import import check_vocab_size, default_checkpoint_dir, load_bert
from core.metrics import GatheredRows
from core.optim import OptimizerConfig, SchedulerConfig, as_dataclass, configure
from ner.align import CASING, IGNORE, SentenceEncoder, document_context
from ner.conll import read_conll, to_iob2
from ner.crf import CRF, iob2_start_penalty, iob2_transition_penalty, pack_words, unpack_words, viterbi
from ner.data import TaggingSpec, collate


def entity_scores(gold: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict[str, float]:
    """Word-level entity precision/recall/F1 (seqeval default mode, like conlleval) and `f1_<TYPE>` per type."""
    scores = {"precision": precision_score(gold, pred, zero_division=0),
              "recall": recall_score(gold, pred, zero_division=0), "f1": f1_score(gold, pred, zero_division=0)}
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    for kind in sorted({label[2:] for label in labels if label != "O"}):
        scores[f"f1_{kind}"] = report.get(kind, {}).get("f1-score", 0.0)
    return {k: float(v) for k, v in scores.items()}


def first_subtoken_mask(word_ids: Tensor) -> Tensor:
    """True at the first sub-token of every word; `word_ids` (B, T) is -1 at specials and padding."""
    prev = F.pad(word_ids[:, :-1], (1, 0), value=-1)
    return (word_ids >= 0) & (word_ids != prev)


class TaggerModule(ResolvedConfig, BertTask, CompressionHooks, LightningModule):
    """BERT + (optional casing embedding) + dropout + linear head over IOB2 labels.

    `checkpoint_dir` is a HF BERT folder with weights (None: the default MiniLM); with
    `bert_config` the encoder is built from that config with fresh weights instead (tiny test
    models, and reloading from our own checkpoints, whose state dict brings the weights).
    `casing` adds a zero-initialised embedding of the word's casing class to each sub-token,
    so training starts from exactly the pretrained model. `data_spec` comes from the data
    (`ner.data.TaggingSpec`); `optimizer` / `scheduler` are `core.optim`'s (a schedule callback
    sets the rate every step).

    Compression (`compression.spec`) acts on `self.bert`: a pruned / factorised / shared /
    gated encoder reloads from its checkpoint alone. `gates` (`compression.gates.GateConfig`, types
    ['bert_self']) attaches hard-concrete head gates at construction, weighs their L0 penalty and
    may give their log-alphas a constant rate of their own; `init_from` starts from a checkpoint's
    weights (not its optimizer).

    Students: `bert_config` (fewer layers / hidden / heads / intermediate) builds a fresh small
    encoder; `student` (`compression.student.StudentShape`: keep_layers, share_layers,
    factorize_embedding_rank) reshapes the pretrained / `init_from` encoder at construction and is
    recorded in the checkpoint's compression spec (kept layers: in its resolved `bert_config`).
    `kd` (`compression.student.KDConfig`) distils from a trained TaggerModule checkpoint with the
    same label list and tokenizer vocabulary: token-level `kd_loss` (alpha * T^2 * KL + (1 - alpha)
    * CE, sub-tokens labelled -100 excluded); `kd.hidden_weight` > 0 adds an MSE between student and
    teacher hidden states over real tokens (`hidden_state_loss`: student layer l against teacher layer
    round(l * L_t / L_s), equal widths), taking the teacher logits from that same pass; `kd.cache`
    (a folder) caches the teacher's logits per training example on disk (`compression.logit_cache`,
    keyed by the teacher file's SHA-256 and the example's content). The teacher is frozen, in eval
    mode, and kept out of the state dict and checkpoint.
    `crf` puts a linear-chain CRF over the word-level scores (first sub-tokens): its sequence
    negative log-likelihood is added to the training loss and tags are decoded by Viterbi. Its
    few zero-initialised scores train at `crf_lr_scale` times the encoder's rate (at a fine-tuning
    rate like 3e-4 an Adam step moves a transition score by ~3e-4: they would barely leave 0).
    `constrained_decoding` (no CRF) decodes by Viterbi over the softmax log-probabilities with
    IOB2-invalid transitions forbidden, instead of a per-word argmax; with a CRF it is implied.
    `embedding_lr_scale` trains the word-embedding table (of a factorised embedding: the per-token
    rows, not the shared projection) undecayed at that multiple of the scheduled rate: a token seen
    a few times per epoch gets a few Adam steps, too few at a fine-tuning rate to move its row.
    """

    task_name = "ner"  # recorded in every checkpoint (`core.tasks`)

    def __init__(
        self, checkpoint_dir: str | None = None, bert_config: dict | None = None, casing: bool = False,
        dropout: float = 0.1, data_spec: TaggingSpec | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(name="adamw", lr=5e-5, weight_decay=0.01),
        scheduler: SchedulerConfig | None = None, gates: GateConfig | None = None, init_from: str | None = None,
        student: StudentShape | None = None, kd: KDConfig | None = None, crf: bool = False,
        crf_lr_scale: float = 100.0, constrained_decoding: bool = False, embedding_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data_spec is None:
            raise ValueError("TaggerModule needs data_spec with 'labels' and 'tokenizer' "
                             "(given by CoNLLDataModule.spec(); train.py links it)")
        self.data_spec: TaggingSpec = as_dataclass(TaggingSpec, data_spec)
        self.optimizer_config = as_dataclass(OptimizerConfig, optimizer)
        self.scheduler_config = as_dataclass(SchedulerConfig, scheduler)
        self.student_shape = as_dataclass(StudentShape, student) or StudentShape()
        self.kd: KDConfig | None = as_dataclass(KDConfig, kd)
        if self.kd is not None and self.kd.teacher is None:  # KD settings without a teacher: plain training
            self.kd = None
        self.constrained_decoding = constrained_decoding  # decoding only: callers may switch it on a trained model
        self.labels: list[str] = list(self.data_spec.labels)
        self.max_length: int = int(self.data_spec.max_length)
        if bert_config is None:
            self.bert = load_bert(checkpoint_dir or str(default_checkpoint_dir()))
        else:
            self.bert = BertModel(BertConfig.from_dict(bert_config))
        hidden = self.bert.cfg.hidden_size
        self.casing_embed = nn.Embedding(len(CASING), hidden) if casing else None
        if self.casing_embed is not None:
            nn.init.zeros_(self.casing_embed.weight)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, len(self.labels))
        self.crf = CRF(self.labels) if crf else None
        # (sentence, word, gold, predicted) rows of every process: sharded evaluation scores the whole split.
        self.eval_rows = nn.ModuleDict({"val": GatheredRows(4, self._entity_scores),
                                        "test": GatheredRows(4, self._entity_scores)})
        self.init_compression(init_from)  # weights first, then the student's shape
        shape = self.student_shape
        shape_bert_student(self.bert, shape.factorize_embedding_rank, shape.share_layers, shape.keep_layers)
        self.setup_compression(gates)
        attach_teacher(self, load_teacher(TaggerModule, self.kd.teacher) if self.kd else None)
        if self.teacher is not None and self.teacher.labels != self.labels:
            raise ValueError(f"teacher {self.kd.teacher!r} has labels {self.teacher.labels} but the student has "
                             f"{self.labels}: teacher and student must share the label set")
        self.logit_cache = TeacherLogitCache(self.kd.cache, self.kd.teacher) if self.kd and self.kd.cache else None

    @override
    def architecture_hparams(self) -> dict:
        """The encoder as built (a pretrained folder's config, kept layers applied): the checkpoint brings the
        weights, so neither the folder nor the deeper encoder is needed to reload."""
        return {"bert_config": self.bert.cfg.to_dict(), "checkpoint_dir": None,
                "student": asdict(replace(self.student_shape, keep_layers=None)),
                "constrained_decoding": self.constrained_decoding}

    @property
    def teacher(self) -> TaggerModule | None:
        """The frozen teacher (not a registered submodule), or None without KD."""
        return get_teacher(self)  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        """Check, before any step, that the tokenizer's ids index the embedding table."""
        check_vocab_size(self.tokenizer, self.bert)
        if self.teacher is not None and self.teacher.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"teacher {self.kd.teacher!r} and student use different tokenizer "
                             "vocabularies: the teacher's logits would be for other sub-tokens")

    def on_fit_start(self) -> None:
        """Print the exact parameter count; move the teacher to this device, frozen."""
        if prepare_teacher(self, self.device) is not None:
            self.print(f"[kd] student {parameter_line(self)}; "
                       f"teacher {self.kd.teacher}: {parameter_line(self.teacher)}; "
                       f"alpha {self.kd.alpha}, T {self.kd.temperature}")

    def on_train_epoch_end(self) -> None:
        """Write newly cached teacher logits to disk (every epoch, so an interrupted run keeps them)."""
        if self.logit_cache is not None and self.trainer.is_global_zero:
            self.logit_cache.save()

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, casing: Tensor | None = None) -> list[Tensor]:
        """[embeddings, layer 1, ..., layer L] hidden states (B, T, d) for padded sub-token ids."""
        extra = self.casing_embed(casing) if self.casing_embed is not None else None
        return self.bert(input_ids, attention_mask, extra_embeddings=extra, all_hidden_states=True)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, casing: Tensor | None = None) -> Tensor:
        """Label logits (B, T, num_labels) for padded sub-token ids."""
        return self.head(self.dropout(self.hidden_states(input_ids, attention_mask, casing)[-1]))

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch["casing"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy over labelled sub-tokens (IGNORE elsewhere), or KD with a teacher."""
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        if (l0 := self.l0_term()) is not None:
            loss = loss + l0
        return loss

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean loss over labelled sub-tokens (CE, or token-level `kd_loss` with a teacher), plus the
        CRF's word-level sequence NLL when there is a CRF, plus `kd.hidden_weight` times the hidden-state
        alignment to the teacher."""
        hidden_loss = teacher_out = None
        if self.kd is not None and self.kd.hidden_weight and self.teacher is not None:
            inputs = (batch["input_ids"], batch["attention_mask"], batch["casing"])
            states = self.hidden_states(*inputs)
            logits = self.head(self.dropout(states[-1]))
            with torch.no_grad():  # the teacher runs anyway: its logits come from the same pass (eval: no dropout)
                teacher_states = self.teacher.hidden_states(*inputs)
                teacher_out = self.teacher.head(teacher_states[-1])
            hidden_loss = hidden_state_loss(states, teacher_states, batch["attention_mask"])
        else:
            logits = self._logits(batch)
        if self.teacher is None:
            # fp32: under bf16 autocast the logits are bf16, and the loss is reduced in fp32
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE)
        else:
            loss = kd_loss(logits, self.teacher_logits(batch) if teacher_out is None else teacher_out, batch["labels"],
                           temperature=self.kd.temperature, alpha=self.kd.alpha, ignore_index=IGNORE)
        if self.crf is not None:
            first = first_subtoken_mask(batch["word_ids"])
            emissions, mask = pack_words(logits.float(), first)
            tags, _ = pack_words(batch["labels"].clamp(min=0), first)
            loss = loss + self.crf.nll(emissions, tags, mask)
        if hidden_loss is not None:
            loss = loss + self.kd.hidden_weight * hidden_loss
        return loss

    def teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The frozen teacher's logits for a batch, from the logit cache when it has every row."""
        def live() -> Tensor:
            return teacher_logits(self.teacher, batch["input_ids"], batch["attention_mask"], batch["casing"])

        if self.logit_cache is None:
            return live()
        lengths = batch["attention_mask"].sum(1)  # windows are padded at the end
        keys = row_keys(lengths, batch["input_ids"], batch["casing"])
        return self.logit_cache.logits(keys, lengths, batch["input_ids"].shape[1], live)

    def predict_labels(self, logits: Tensor, word_ids: Tensor) -> Tensor:
        """Label ids (B, T) at the words' first sub-tokens: per-word argmax, or a Viterbi path over the
        words in valid IOB2 (CRF scores, or log-probabilities without a CRF)."""
        if self.crf is None and not self.constrained_decoding:
            return logits.argmax(-1)
        first = first_subtoken_mask(word_ids)
        emissions, mask = pack_words(logits if self.crf is not None else logits.log_softmax(-1), first)
        # A window that opens its sentence (holds its word 0) may not start inside an entity; a later window may.
        opens_sentence = (word_ids == 0).any(1)
        start = iob2_start_penalty(self.labels).to(logits.device) * opens_sentence[:, None]
        if self.crf is not None:
            path = self.crf.decode(emissions, mask, start)
        else:
            path = viterbi(emissions, mask, iob2_transition_penalty(self.labels).to(logits.device), start)
        return unpack_words(path, first, fill=0)

    def _word_rows(self, batch: dict[str, Tensor], logits: Tensor) -> Tensor:
        """(N, 4) rows (sentence, word, gold label, predicted label), one per word in the batch."""
        first = first_subtoken_mask(batch["word_ids"])
        rows, cols = first.nonzero(as_tuple=True)
        predicted = self.predict_labels(logits, batch["word_ids"])
        return torch.stack([batch["sentence"][rows], batch["word_ids"][rows, cols],
                            batch["labels"][rows, cols], predicted[rows, cols]], dim=1)

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.eval_rows["val"].update(self._word_rows(batch, self._logits(batch)))

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.eval_rows["test"].update(self._word_rows(batch, self._logits(batch)))

    @override
    def on_validation_epoch_end(self) -> None:
        scores = self._score("val")
        self.log_dict(scores)
        # TensorBoard's hparams view pairs the run's hyper-parameters with `hp_metric`.
        self.log("hp_metric", scores["val/f1"])

    @override
    def on_test_epoch_end(self) -> None:
        self.log_dict(self._score("test"))

    def _sentences(self, rows: Tensor, column: int) -> list[list[str]]:
        """Label strings per sentence, words in order, from `_word_rows` output."""
        rows = rows[torch.argsort(rows[:, 0] * (rows[:, 1].max() + 1) + rows[:, 1])]
        out: list[list[str]] = []
        last = None
        for sentence, label in zip(rows[:, 0].tolist(), rows[:, column].tolist(), strict=True):
            if sentence != last:
                out.append([])
                last = sentence
            out[-1].append(self.labels[label])
        return out

    def _entity_scores(self, rows: Tensor) -> dict[str, float]:
        """Word-level entity P/R/F1, overall and per type, of `_word_rows` rows."""
        rows = rows.cpu().long()
        sentences = float(len(rows[:, 0].unique()))  # over all processes: each tagged its share
        return {**entity_scores(self._sentences(rows, 2), self._sentences(rows, 3), self.labels),
                "sentences": sentences}

    def _score(self, prefix: str) -> dict[str, float]:
        """The scores of the split evaluated (all processes), keys `<prefix>/...`; {} if nothing was evaluated."""
        scores = self.eval_rows[prefix].compute()
        self.eval_rows[prefix].reset()
        return {f"{prefix}/{k}": v for k, v in scores.items()}

    @torch.no_grad()
    def tag(
        self, sentences: list[list[str]], batch_size: int = 32, documents: list[int] | None = None
    ) -> list[list[str]]:
        """Predicted IOB2 tags for whitespace-tokenized sentences (windows for long ones).

        `documents` (a document number per sentence; None: all one document) gives a model
        trained with document context the neighbouring sentences of the same document.
        """
        context = self.data_spec.context_tokens
        encoder = SentenceEncoder(self.tokenizer, self.labels, self.max_length, context_tokens=context)
        documents = documents if documents is not None else [0] * len(sentences)
        examples = [e for i, words in enumerate(sentences)
                    for e in encoder(words, i, None, "", *document_context(sentences, documents, i, context))]
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        predicted: list[list[str]] = [["O"] * len(words) for words in sentences]
        was_training = self.training
        self.eval()
        for indices in LengthBatchSampler([len(e.input_ids) for e in examples], batch_size=batch_size):
            batch = {k: v.to(self.device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            for sentence, word, _, label in self._word_rows(batch, self._logits(batch)).tolist():
                predicted[sentence][word] = self.labels[label]
        self.train(was_training)
        return predicted

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """`core.optim.configure`; gates get `gates.lr` if set; the CRF's scores and (with `embedding_lr_scale`
        != 1) the word-embedding table train undecayed at their scale times the (scheduled) rate."""
        scaled = []  # (parameters, scale) trained undecayed at their own multiple of the rate
        if self.crf is not None:
            scaled.append((list(self.crf.parameters()), float(self.hparams.crf_lr_scale)))
        if (embedding_scale := float(self.hparams.embedding_lr_scale)) != 1.0:
            words = self.bert.embeddings.word_embeddings
            scaled.append(([getattr(words, "table", words).weight], embedding_scale))
        lr = self.optimizer_config.lr
        scaled_groups = [{"params": params, "weight_decay": 0.0, "lr": lr * scale, "lr_scale": scale}
                         for params, scale in scaled]
        return configure(self, self.optimizer_config, self.scheduler_config, [*self.gate_groups(), *scaled_groups],
                         self.trainer.callbacks if self._trainer is not None else ())


def score_conll(module: TaggerModule, path: str | Path) -> dict[str, float]:
    """`entity_scores` of `module` on a CoNLL file (IOB1 or IOB2), documents kept apart for context models."""
    sentences, _ = to_iob2(read_conll(path))
    pred = module.tag([s.tokens for s in sentences], documents=[s.document for s in sentences])
    return {**entity_scores([s.tags for s in sentences], pred, module.labels), "sentences": len(sentences)}
