"""LightningModule for translation: label-smoothed CE, optimiser, BLEU/chrF validation."""

from __future__ import annotations

from dataclasses import asdict, replace

import lightning as L
import sacrebleu
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from typing_extensions import override

from compression.distill import kd_loss, teacher_logits
from compression.spec import CompressionHooks
from compression.student import (
    attach_teacher,
    check_kd_hparams,
    get_teacher,
    load_teacher,
    parameter_line,
    prepare_teacher,
    save_kd,
)
from core.tasks import TASK_KEY
from nmt.loss import label_smoothed_ce
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer
from nmt.search import beam_search, greedy_search
from nmt.vocab import Vocab

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def corpus_scores(hyps: list[str], refs: list[str]) -> dict:
    """sacreBLEU corpus BLEU and chrF on detokenised text, with their signatures."""
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": bleu.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def _as_config(arch: Seq2SeqConfig | dict) -> Seq2SeqConfig:
    """Hyper-parameters may come back from a checkpoint or a config as a plain mapping."""
    return arch if isinstance(arch, Seq2SeqConfig) else Seq2SeqConfig(**dict(arch))


class TranslationModule(CompressionHooks, L.LightningModule):
    """Seq2seq transformer trained with label-smoothed cross-entropy.

    Args:
        arch: transformer architecture; vocabulary size and special ids come from the data.
        optimizer: 'adam' or 'adamw'. lr is the base rate (schedule callbacks overwrite it).
        label_smoothing: epsilon of the smoothed target.
        val_beam_size: beam used for validation BLEU (1 = greedy, cheaper per epoch).
        test_beam_size / length_penalty / max_len_a / max_len_b: decoding for test.
        num_samples: translations logged to TensorBoard per validation.
        data_spec: linked from the datamodule (vocabulary size, special ids).
        gate_types: attention types (encoder_self, decoder_self, decoder_cross) given hard-concrete
            head gates at construction (gate fine-tuning).
        l0_lambda: weight of the gates' L0 penalty added to the training loss (needs gates), or
            {attention type: weight} to push some types harder (types left out: 0).
        gate_lr: constant learning rate of the gates' log-alphas (own param group, no weight decay,
            not touched by schedule callbacks); None trains them like every other parameter.
        init_from: checkpoint whose network weights (not optimizer state) start training; its
            compression (pruned heads, factorisation, sharing, gates) is rebuilt first.
        teacher: checkpoint of a trained TranslationModule to distil from (word-level KD over the
            target positions, padding excluded). It must have the same vocabulary (size and
            SentencePiece models); it is frozen, in eval mode and not part of this module's
            state dict or checkpoint (the saved `teacher` hyperparameter is dropped).
        kd_alpha / kd_temperature: training loss with a teacher is
            kd_alpha * T^2 * KL(teacher_T || student_T) + (1 - kd_alpha) * label-smoothed CE
            (`compression.distill.kd_loss`, mean over real target tokens).

    Compressed networks reload from their checkpoint alone (`compression.spec`).
    """

    task_name = "nmt"  # recorded in every checkpoint (`core.tasks`)

    def __init__(
        self, arch: Seq2SeqConfig = Seq2SeqConfig(), optimizer: str = "adam", lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.98), weight_decay: float = 0.0, label_smoothing: float = 0.1,
        val_beam_size: int = 1, test_beam_size: int = 5, length_penalty: float = 0.6,
        max_len_a: float = 1.2, max_len_b: int = 10, num_samples: int = 8, data_spec: dict | None = None,
        gate_types: list[str] | None = None, l0_lambda: float | dict[str, float] = 0.0, init_from: str | None = None,
        teacher: str | None = None, kd_alpha: float = 0.5, kd_temperature: float = 2.0,
        gate_lr: float | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        self.save_hyperparameters()
        cfg = replace(_as_config(arch), **(data_spec or {}))
        self.model = Seq2SeqTransformer(cfg)
        self.vocab: Vocab | None = None
        self._outputs: list[tuple[str, str, str]] = []
        self.setup_compression(gate_types, init_from, l0_lambda)
        check_kd_hparams(kd_alpha, kd_temperature)
        attach_teacher(self, load_teacher(TranslationModule, teacher) if teacher else None)
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
            raise ValueError(f"teacher {self.hparams.teacher!r} and student must share the vocabulary ({detail})")
        if teacher.vocab is not None and self.vocab is not None and teacher.vocab.to_state() != self.vocab.to_state():
            raise ValueError(f"teacher {self.hparams.teacher!r} and student have different SentencePiece "
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
                       f"teacher {self.hparams.teacher}: {parameter_line(self.teacher.model)}; "
                       f"alpha {self.hparams.kd_alpha}, T {self.hparams.kd_temperature}")

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Per-token training loss (label-smoothed CE, or KD with a teacher) and the token count."""
        logits = self.model(batch["src"], batch["tgt_in"])
        ntokens = int((batch["tgt_out"] != self.cfg.pad_id).sum())
        if self.teacher is not None:
            t_logits = teacher_logits(self.teacher.model, batch["src"], batch["tgt_in"])
            loss = kd_loss(logits, t_logits, batch["tgt_out"], temperature=self.hparams.kd_temperature,
                           alpha=self.hparams.kd_alpha, ignore_index=self.cfg.pad_id,
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
        opts = dict(max_len_a=self.hparams.max_len_a, max_len_b=self.hparams.max_len_b)
        if beam_size == 1:
            return greedy_search(self.model, src, **opts)
        return beam_search(self.model, src, beam_size=beam_size, length_penalty=self.hparams.length_penalty,
                           **opts)

    def _eval_step(self, batch: dict, stage: str, beam_size: int) -> None:
        logits = self.model(batch["src"], batch["tgt_in"])
        loss_sum, ntokens = label_smoothed_ce(logits, batch["tgt_out"], 0.0, self.cfg.pad_id)
        self.log(f"{stage}/loss", loss_sum / max(1, ntokens), batch_size=ntokens, sync_dist=True)
        hyps = self.vocab.decode_tgt(self.translate(batch["src"], beam_size))
        self._outputs += list(zip(batch["src_text"], batch["ref_text"], hyps, strict=True))

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.hparams.val_beam_size)

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.hparams.test_beam_size)

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return
        scores = corpus_scores([h for _, _, h in outputs], [r for _, r, _ in outputs])
        self.log(f"{stage}/bleu", scores["bleu"], prog_bar=True)
        self.log(f"{stage}/chrf", scores["chrf"])
        if stage == "val":  # TensorBoard's hparams view pairs the run's hyper-parameters with `hp_metric`
            self.log("hp_metric", scores["bleu"])
        self.last_eval = {"stage": stage, **scores, "outputs": outputs}
        if isinstance(self.logger, TensorBoardLogger) and not self.trainer.sanity_checking:
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
    def configure_optimizers(self) -> torch.optim.Optimizer:
        gate_ids, gate_group = self.split_gate_parameters(self.hparams.get("gate_lr"))
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if id(p) not in gate_ids:
                (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}, *gate_group]
        return OPTIMIZERS[self.hparams.optimizer](groups, lr=self.hparams.lr, betas=self.hparams.betas)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = self.task_name
        self.save_compression(checkpoint)
        save_kd(checkpoint)
        if self.vocab is not None:
            checkpoint["vocab"] = self.vocab.to_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        hparams = checkpoint.get("hyper_parameters", {})
        if "arch" in hparams:
            saved = asdict(replace(_as_config(hparams["arch"]), **(hparams.get("data_spec") or {})))
            differ = {k: (v, getattr(self.cfg, k)) for k, v in saved.items() if getattr(self.cfg, k) != v}
            if differ:
                detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in differ.items())
                raise ValueError(f"checkpoint does not match the model config ({detail})")
        self.load_compression(checkpoint)
        if "vocab" in checkpoint:
            self.vocab = Vocab.from_state(checkpoint["vocab"])
