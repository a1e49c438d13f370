"""LightningModule for translation: label-smoothed CE, optimiser, BLEU/chrF validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import lightning as L
import sacrebleu
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from typing_extensions import override

from compression.distill import kd_loss, teacher_logits
from compression.gates import GateConfig
from compression.spec import CompressionHooks
from compression.student import KDConfig, attach_teacher, get_teacher, load_teacher, parameter_line, prepare_teacher
from core.config import ResolvedConfig
from core.metrics import TokenMean
from core.optim import OptimizerConfig, SchedulerConfig, as_dataclass, configure
from core.tasks import TASK_KEY
from nmt.loss import label_smoothed_ce
from nmt.metrics import CorpusBLEU
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer
from nmt.search import beam_search, greedy_search
from nmt.vocab import Vocab, VocabSpec


def corpus_scores(hyps: list[str], refs: list[str]) -> dict:
    """sacreBLEU corpus BLEU and chrF on detokenised text, with their signatures."""
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": bleu.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


@dataclass(frozen=True)
class DecodingConfig:
    """Beam search for validation (1 = greedy, cheaper per epoch) and test; length penalty and the
    output length limit max_len_a * source length + max_len_b."""

    val_beam_size: int = 1
    test_beam_size: int = 5
    length_penalty: float = 0.6
    max_len_a: float = 1.2
    max_len_b: int = 10


class TranslationModule(ResolvedConfig, CompressionHooks, L.LightningModule):
    """Seq2seq transformer trained with label-smoothed cross-entropy.

    Args:
        arch: transformer architecture; vocabulary size and special ids come from the data.
        data_spec: linked from the datamodule (`VocabSpec`).
        optimizer / scheduler: `core.optim` (step schedules are callbacks and overwrite the rate).
        label_smoothing: epsilon of the smoothed target.
        decoding: beam sizes and length limits (`DecodingConfig`).
        num_samples: translations logged to TensorBoard per validation.
        gates: hard-concrete head gates on attention types (encoder_self, decoder_self,
            decoder_cross) and their L0 weight (`compression.gates.GateConfig`).
        init_from: checkpoint whose network weights (not optimizer state) start training; its
            compression (pruned heads, factorisation, sharing, gates) is rebuilt first.
        kd: word-level KD from a trained TranslationModule over the target positions, padding
            excluded (`compression.student.KDConfig`; its CE side is label-smoothed). The teacher must
            have the same vocabulary (size and SentencePiece models); it is frozen, in eval mode and
            not part of this module's state dict or checkpoint.

    Compressed networks reload from their checkpoint alone (`compression.spec`).
    """

    task_name = "nmt"  # recorded in every checkpoint (`core.tasks`)
    legacy_hparams = {k: ("decoding", k) for k in ("val_beam_size", "test_beam_size", "length_penalty",
                                                    "max_len_a", "max_len_b")}

    def __init__(
        self, arch: Seq2SeqConfig = Seq2SeqConfig(), data_spec: VocabSpec | None = None,
        optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=5e-4, betas=(0.9, 0.98)),
        scheduler: SchedulerConfig | None = None, label_smoothing: float = 0.1,
        decoding: DecodingConfig = DecodingConfig(), num_samples: int = 8, gates: GateConfig | None = None,
        init_from: str | None = None, kd: KDConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_config = as_dataclass(OptimizerConfig, optimizer)
        self.scheduler_config = as_dataclass(SchedulerConfig, scheduler)
        self.decoding = as_dataclass(DecodingConfig, decoding)
        self.kd: KDConfig | None = as_dataclass(KDConfig, kd)
        if self.kd is not None and self.kd.teacher is None:  # KD settings without a teacher: plain training
            self.kd = None
        if self.kd is not None and (self.kd.hidden_weight or self.kd.cache):
            raise ValueError("kd.hidden_weight and kd.cache are options of the BERT tasks, not of translation")
        spec = as_dataclass(VocabSpec, data_spec)
        arch = as_dataclass(Seq2SeqConfig, arch)
        self.model = Seq2SeqTransformer(replace(arch, **asdict(spec)) if spec is not None else arch)
        self.vocab: Vocab | None = None
        self._outputs: list[tuple[str, str, str]] = []  # this process's (source, reference, hypothesis)
        # Token-weighted loss and corpus BLEU/chrF reduced across processes: sharded evaluation is exact.
        self.eval_loss = nn.ModuleDict({"val": TokenMean(), "test": TokenMean()})
        self.eval_bleu = nn.ModuleDict({"val": CorpusBLEU(), "test": CorpusBLEU()})
        self.setup_compression(gates, init_from)
        attach_teacher(self, load_teacher(TranslationModule, self.kd.teacher) if self.kd else None)
        self._check_teacher_vocab()

    @property
    def teacher(self) -> TranslationModule | None:
        """The frozen teacher (not a registered submodule), or None without KD."""
        return get_teacher(self)  # type: ignore[return-value]

    def _check_teacher_vocab(self) -> None:
        """Teacher and student must share the vocabulary: same size / special ids and, once both
        are known, the same SentencePiece models."""
        teacher = self.teacher
        if teacher is None:
            return
        keys = ("vocab_size", "pad_id", "bos_id", "eos_id")
        differ = {k: (getattr(teacher.cfg, k), getattr(self.cfg, k)) for k in keys
                  if getattr(teacher.cfg, k) != getattr(self.cfg, k)}
        if differ:
            detail = ", ".join(f"{k}: teacher {a} vs student {b}" for k, (a, b) in differ.items())
            raise ValueError(f"teacher {self.kd.teacher!r} and student must share the vocabulary ({detail})")
        if teacher.vocab is not None and self.vocab is not None and teacher.vocab.to_state() != self.vocab.to_state():
            raise ValueError(f"teacher {self.kd.teacher!r} and student have different SentencePiece "
                             "models: they must share the vocabulary")

    @override
    def compressible_network(self) -> nn.Module:
        return self.model

    @property
    def cfg(self) -> Seq2SeqConfig:
        """The architecture of the seq2seq network, data-dependent sizes included."""
        return self.model.cfg

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "vocab", None) is not None:
            if datamodule.vocab.size != self.cfg.vocab_size:
                raise ValueError(f"vocabulary of the data has {datamodule.vocab.size} pieces but the model "
                                 f"was built for {self.cfg.vocab_size}")
            self.vocab = datamodule.vocab
        self._check_teacher_vocab()

    @override
    def on_fit_start(self) -> None:
        if prepare_teacher(self, self.device) is not None:
            self.print(f"[kd] student {parameter_line(self.model)}; "
                       f"teacher {self.kd.teacher}: {parameter_line(self.teacher.model)}; "
                       f"alpha {self.kd.alpha}, T {self.kd.temperature}")

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Per-token training loss (label-smoothed CE, or KD with a teacher) and the token count."""
        logits = self.model(batch["src"], batch["tgt_in"])
        ntokens = int((batch["tgt_out"] != self.cfg.pad_id).sum())
        if self.teacher is not None:
            t_logits = teacher_logits(self.teacher.model, batch["src"], batch["tgt_in"])
            loss = kd_loss(logits, t_logits, batch["tgt_out"], temperature=self.kd.temperature,
                           alpha=self.kd.alpha, ignore_index=self.cfg.pad_id,
                           label_smoothing=self.hparams.label_smoothing)
            return loss, ntokens
        loss_sum, ntokens = label_smoothed_ce(logits, batch["tgt_out"], self.hparams.label_smoothing,
                                              self.cfg.pad_id)
        return loss_sum / max(1, ntokens), ntokens

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, ntokens = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=ntokens)
        if (l0 := self.l0_term()) is not None:
            loss = loss + l0
        self.log("train/tokens", float(ntokens), reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def translate(self, src: torch.Tensor, beam_size: int) -> list[list[int]]:
        """Token ids of the best translation for each source row."""
        opts = dict(max_len_a=self.decoding.max_len_a, max_len_b=self.decoding.max_len_b)
        if beam_size == 1:
            return greedy_search(self.model, src, **opts)
        return beam_search(self.model, src, beam_size=beam_size, length_penalty=self.decoding.length_penalty,
                           **opts)

    def _eval_step(self, batch: dict, stage: str, beam_size: int) -> None:
        logits = self.model(batch["src"], batch["tgt_in"])
        loss_sum, ntokens = label_smoothed_ce(logits, batch["tgt_out"], 0.0, self.cfg.pad_id)
        self.eval_loss[stage].update(loss_sum, ntokens)
        hyps = self.vocab.decode_tgt(self.translate(batch["src"], beam_size))
        self.eval_bleu[stage].update(hyps, batch["ref_text"])
        self._outputs += list(zip(batch["src_text"], batch["ref_text"], hyps, strict=True))

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.decoding.val_beam_size)

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.decoding.test_beam_size)

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._outputs = self._outputs, []
        scores, loss = self.eval_bleu[stage].compute(), self.eval_loss[stage].compute()  # whole split, all ranks
        self.eval_bleu[stage].reset()
        self.eval_loss[stage].reset()
        if not scores["sentences"]:
            return
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/bleu", scores["bleu"], prog_bar=True)
        self.log(f"{stage}/chrf", scores["chrf"])
        self.log(f"{stage}/sentences", float(scores["sentences"]))  # over all processes: each decoded its share
        if stage == "val":  # TensorBoard's hparams view pairs the run's hyper-parameters with `hp_metric`
            self.log("hp_metric", scores["bleu"])
        self.last_eval = {"stage": stage, **scores, "outputs": outputs}
        if isinstance(self.logger, TensorBoardLogger) and not self.trainer.sanity_checking:
            # Samples of this process's share (rank 0's, as Lightning's loggers write on rank 0 only).
            lines = [f"**src** {s}  \n**ref** {r}  \n**hyp** {h}" for s, r, h in outputs[: self.hparams.num_samples]]
            self.logger.experiment.add_text(f"{stage}/samples", "\n\n---\n\n".join(lines), self.global_step)
            self.logger.experiment.add_text(f"{stage}/sacrebleu_signature", scores["bleu_signature"],
                                            self.global_step)

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        return configure(self.model, self.optimizer_config, self.scheduler_config, self.gate_groups(),
                         self.trainer.callbacks if self._trainer is not None else ())

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hyper_parameters"] = self.resolved_hparams()
        checkpoint[TASK_KEY] = self.task_name
        self.save_compression(checkpoint)
        if self.vocab is not None:
            checkpoint["vocab"] = self.vocab.to_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        hparams = checkpoint.get("hyper_parameters", {})
        if "arch" in hparams:
            spec = as_dataclass(VocabSpec, hparams.get("data_spec"))
            saved = asdict(as_dataclass(Seq2SeqConfig, hparams["arch"]))
            saved.update(asdict(spec) if spec is not None else {})
            differ = {k: (v, getattr(self.cfg, k)) for k, v in saved.items() if getattr(self.cfg, k) != v}
            if differ:
                detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in differ.items())
                raise ValueError(f"checkpoint does not match the model config ({detail})")
        self.load_compression(checkpoint)
        if "vocab" in checkpoint:
            self.vocab = Vocab.from_state(checkpoint["vocab"])
