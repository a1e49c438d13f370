"""Prune-then-distil a sentence encoder: score -> prune -> distil -> evaluate -> report.

1. **Score** the teacher's attention heads (`compression.importance.taylor_importance`) and
   FFN neurons (`compression.ffn.ffn_taylor_importance`) with the STS regression loss
   MSE(cosine(u, v), score / 5) on labelled STS train pairs (the teacher distilled against
   itself would have zero loss and zero gradients).
2. **Prune** the `prune_heads` fraction of all heads and the `prune_ffn` fraction of all FFN
   neurons, each ranked globally over layers on per-layer normalised scores, physically.
3. **Distil** the pruned model from the teacher on unlabelled sentences
   (`SentenceEncoderModule`, teacher embeddings cached once for every student).
4. **Evaluate** STS Spearman x 100 for every STS file, params, FLOPs per token and CPU
   latency per batch size, measured side by side in one process (models alternate inside
   each repeat, medians), so speed-ups are ratios of simultaneous measurements.
5. **Report**: `<output_dir>/student.ckpt` (reloads alone), `report.json` (written after
   every stage, so partial results survive) and `report.md`.

With `baselines` the same report also has: the pruned model without distillation, a
same-size student from random init (unless `random_init_baseline` is false) and a
`keep_layers` (DistilBERT-style) student per `drop_layers_keep`, all distilled the same way.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from compression.ffn import feed_forwards, ffn_taylor_importance, prune_ffns
from compression.importance import taylor_importance
from compression.measure import flops_per_token, latency, parameter_counts
from compression.prune import head_config, prune_model
from compression.ranking import keep_per_layer, layers_to_drop
from compression.student import attach_teacher
from core.bert import BertConfig
from core.hf_import import default_checkpoint_dir
from core.optim import OptimizerConfig
from core.schedules import TriangleSchedule
from core.training import git_commit, save_module_checkpoint
from sts.data import SentenceDataModule, read_sts
from sts.module import EmbeddingKD, SentenceEncoderModule, evaluate_sts, reinitialise, sts_regression_loss
from sts.timing import equal_speed_comparison, equal_speed_lines, sentence_batches

log = logging.getLogger(__name__)

NOTES = (
    "Teacher = the unpruned encoder (its en Spearman is the 100 % reference). Pruned: {heads:.1%} of the heads "
    "and {ffn:.1%} of the FFN neurons removed by Taylor importance (global ranking{steps}). Students are distilled on "
    "{n:,} unlabelled sentences for {epochs} epoch(s) (MSE + cosine to cached teacher embeddings). Spearman x 100 "
    "of cosine vs gold on STS-B dev; FLOPs per token at batch 16 (real sentences, padding included); latency = "
    "median of {repeats} CPU forwards, models alternating in one process, so speed-ups are ratios."
)


@dataclass
class PipelineConfig:
    """Everything the pipeline reads; `configs/sts/*.yaml` set these keys (see `prune_distill.py --help`)."""

    train_files: list[str]
    sts_files: dict[str, str]
    score_file: str
    teacher: str | None = None
    pooling: str = "mean"
    score_pairs: int = 1000
    prune_heads: float = 0.5
    prune_ffn: float = 0.5
    prune_steps: int = 1
    drop_layers: int = 0
    head_multiple: int = 1
    ffn_multiple: int = 1
    max_sentences: int | None = None
    max_length: int = 128
    batch_size: int = 64
    epochs: int = 1
    peak_lr: float = 2e-4
    warmup: float = 0.05
    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    hidden_weight: float = 0.0
    similarity_weight: float = 0.0
    baselines: bool = True
    random_init_baseline: bool = True  # False: only the layer-dropping baselines (the equal-speed verdict)
    drop_layers_keep: list[list[int]] = field(default_factory=lambda: [[0, 2, 4]])
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64])
    latency_repeats: int = 10
    output_dir: str = "benchmarks/work/sts_prune_distill"
    report_json: str | None = None
    seed: int = 1234
    precision: str = "32-true"  # Lightning's: "bf16-mixed" distils in bf16 autocast (fp32 weights and losses)


def check_config(cfg: PipelineConfig) -> None:
    """One clear ValueError for a target that leaves nothing or a missing/empty input."""
    if not 0.0 <= cfg.prune_heads < 1.0:
        raise ValueError(f"prune_heads must be in [0, 1), got {cfg.prune_heads}: 1 would remove every head")
    if not 0.0 <= cfg.prune_ffn < 1.0:
        raise ValueError(f"prune_ffn must be in [0, 1), got {cfg.prune_ffn}: 1 would remove every FFN neuron")
    if not cfg.sts_files:
        raise ValueError("sts_files must name at least one STS file ({language: csv})")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.drop_layers < 0 or cfg.head_multiple < 1 or cfg.ffn_multiple < 1:
        raise ValueError(f"drop_layers must be >= 0 and head_multiple, ffn_multiple >= 1, got {cfg.drop_layers}, "
                         f"{cfg.head_multiple}, {cfg.ffn_multiple}")
    if cfg.prune_steps < 1 or cfg.epochs % cfg.prune_steps:
        raise ValueError(f"prune_steps must be >= 1 and divide epochs ({cfg.epochs}), got {cfg.prune_steps}: "
                         "every pruning round is followed by the same number of distillation epochs")


def scoring_batches(datamodule: SentenceDataModule, cfg: PipelineConfig) -> list[dict]:
    """The first `cfg.score_pairs` pairs of `cfg.score_file` as STS batches: the data every choice is scored on."""
    return list(datamodule.sts_loader(read_sts(cfg.score_file)[: cfg.score_pairs]))


def choose_layers(teacher: SentenceEncoderModule, datamodule: SentenceDataModule, cfg: PipelineConfig) -> list[int]:
    """The teacher's layers the pruned students keep: all but the `cfg.drop_layers` whose removal raises the
    STS regression loss least."""
    loss = lambda batch: sts_regression_loss(teacher, batch)  # noqa: E731
    dropped = layers_to_drop(teacher.bert, scoring_batches(datamodule, cfg), loss, cfg.drop_layers)
    return [i for i in range(teacher.bert.cfg.num_hidden_layers) if i not in dropped]


def prune_by_taylor(module: SentenceEncoderModule, datamodule: SentenceDataModule, cfg: PipelineConfig,
                    original: BertConfig, progress: float = 1.0) -> dict:
    """Score on `cfg.score_pairs` STS pairs, then prune in place until `progress` x the configured head and
    FFN fractions of the `original` (teacher's) counts are gone (progress < 1: a step of iterative pruning;
    heads and neurons of layers dropped before count as gone). Widths are multiples of `cfg.head_multiple`
    heads and `cfg.ffn_multiple` neurons (`keep_per_layer`)."""
    batches = scoring_batches(datamodule, cfg)
    loss = lambda _network, batch: sts_regression_loss(module, batch)  # noqa: E731
    head_scores = taylor_importance(module.bert, batches, loss, types=["bert_self"])["bert_self"]
    ffn_scores = ffn_taylor_importance(module.bert, batches, loss)
    layers = original.num_hidden_layers
    heads = _kept_target(layers * original.num_attention_heads, cfg.prune_heads, progress)
    prune_model(module.bert, {"bert_self": keep_per_layer(list(head_scores), heads, cfg.head_multiple)})
    neurons = _kept_target(layers * original.intermediate_size, cfg.prune_ffn, progress)
    prune_ffns(module.bert, keep_per_layer(ffn_scores, neurons, cfg.ffn_multiple))
    return {"heads_per_layer": [len(h) for h in head_config(module.bert)["bert_self"]],
            "ffn_per_layer": [f.fc1.out_features for f in feed_forwards(module.bert)]}


def _kept_target(original: int, fraction: float, progress: float) -> int:
    """How many units remain once `progress` x `fraction` of the `original` count are gone."""
    return original - round(progress * fraction * original)


def distil(student: SentenceEncoderModule, datamodule: SentenceDataModule, cfg: PipelineConfig, name: str,
           teacher_cache: torch.Tensor, epochs: int | None = None) -> dict[str, float]:
    """Fit `student` to the cached teacher embeddings for `epochs` (default `cfg.epochs`); returns the last
    validation's metrics. Seeded afresh, so a row does not depend on which rows were distilled before it."""
    L.seed_everything(cfg.seed, workers=True)
    student.teacher_cache = teacher_cache
    trainer = L.Trainer(
        max_epochs=epochs or cfg.epochs, accelerator="auto", precision=cfg.precision,
        logger=TensorBoardLogger(cfg.output_dir, name=name),
        callbacks=[TriangleSchedule(cfg.peak_lr, cfg.warmup)], enable_checkpointing=False,
        num_sanity_val_steps=0, log_every_n_steps=20, gradient_clip_val=1.0, enable_model_summary=False,
        use_distributed_sampler=False,  # the datamodule's batch samplers shard across processes themselves
    )
    trainer.fit(student, datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def prune_and_distil_iteratively(start: SentenceEncoderModule, teacher: SentenceEncoderModule,
                                 datamodule: SentenceDataModule, cfg: PipelineConfig,
                                 cache: torch.Tensor) -> tuple[SentenceEncoderModule, dict, dict]:
    """`cfg.prune_steps` rounds of (re-score, prune 1/steps of the target, distil epochs/steps) from the
    unpruned `start` (the teacher, or its kept layers): the scores of later rounds see the model the
    earlier rounds left. Returns (student, metrics, shape)."""
    student = copy.deepcopy(start)
    attach_teacher(student, teacher)
    metrics, shape = {}, {}
    for step in range(1, cfg.prune_steps + 1):
        shape = prune_by_taylor(student, datamodule, cfg, teacher.bert.cfg, progress=step / cfg.prune_steps)
        metrics = distil(student, datamodule, cfg, f"pruned_distilled_step{step}", cache,
                         epochs=cfg.epochs // cfg.prune_steps)
    return student, metrics, shape


def sts_scores(model: SentenceEncoderModule, datamodule: SentenceDataModule) -> dict[str, float]:
    """{"spearman_<lang>": Spearman x 100} over every STS file of the datamodule."""
    return {f"spearman_{lang}": evaluate_sts(model, pairs) for lang, pairs in datamodule.sts.items()}


def latency_inputs(datamodule: SentenceDataModule, batch_sizes: list[int]) -> dict[int, dict]:
    """Real padded batches: the first B first-sentences of the first STS file."""
    pairs = next(iter(datamodule.sts.values()))
    return sentence_batches(datamodule.tokenizer, [p.sentence1 for p in pairs], batch_sizes,
                            datamodule.hparams.max_length)


def write_report(report: dict, json_paths: list[Path]) -> None:
    """Write each JSON report and the markdown table beside it (called after every stage)."""
    for path in json_paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        path.with_suffix(".md").write_text(markdown_table(report))


def markdown_table(report: dict) -> str:
    """The report as a markdown table, one row per model."""
    langs = report.get("languages", [])
    sizes = report.get("latency_batch_sizes", [])
    head = (["model"] + [f"STS {lang}" for lang in langs] + ["% of teacher (en)", "params", "MFLOPs/token"]
            + [f"ms @ b{b}" for b in sizes] + [f"speed-up b{b}" for b in sizes])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.get("rows", []):
        cells = [row["name"]] + [f"{row.get(f'spearman_{lang}', float('nan')):.2f}" for lang in langs]
        cells += [f"{row.get('quality_vs_teacher', float('nan')):.2f}", f"{row.get('params', 0):,}",
                  f"{row.get('flops', 0) / 1e6:.2f}"]
        cells += [f"{row.get('latency_ms', {}).get(str(b), row.get('latency_ms', {}).get(b, float('nan'))):.1f}"
                  for b in sizes]
        cells += [f"{row['speedup'][str(b)]:.2f}×" if str(b) in row.get("speedup", {}) else "–" for b in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    notes = report.get("notes", "")
    lines_equal = equal_speed_lines(report.get("rows", []), sizes)
    if lines_equal:
        notes += "\n\n" + "\n".join(lines_equal)
    return f"# {report.get('title', 'STS prune-then-distil')}\n\n" + "\n".join(lines) + f"\n\n{notes}\n"


def run_pipeline(cfg: PipelineConfig) -> dict:
    """The whole pipeline; returns the report dict (also written as JSON and markdown)."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.output_dir)
    teacher_dir = cfg.teacher or str(default_checkpoint_dir())
    dm = SentenceDataModule(cfg.train_files, cfg.sts_files, tokenizer=teacher_dir, max_sentences=cfg.max_sentences,
                            max_length=cfg.max_length, batch_size=cfg.batch_size, seed=cfg.seed)
    spec = dm.spec()
    kd = EmbeddingKD(mse_weight=cfg.mse_weight, cosine_weight=cfg.cosine_weight, hidden_weight=cfg.hidden_weight,
                     similarity_weight=cfg.similarity_weight)  # the teacher is attached in memory
    optimizer = OptimizerConfig(name="adamw", lr=cfg.peak_lr, weight_decay=0.01)
    new = lambda **kw: SentenceEncoderModule(checkpoint_dir=teacher_dir, data_spec=spec, pooling=cfg.pooling,  # noqa: E731
                                             optimizer=optimizer, kd=kd, **kw)
    teacher = new()
    report: dict = {"title": "STS prune-then-distil", "config": asdict(cfg), "git_commit": git_commit(),
                    "languages": list(dm.sts), "latency_batch_sizes": cfg.latency_batch_sizes,
                    "train_sentences": len(dm.sentences), "rows": [], "stages_seconds": {},
                    "notes": NOTES.format(heads=cfg.prune_heads, ffn=cfg.prune_ffn, steps=_steps_phrase(cfg),
                                          n=len(dm.sentences), epochs=cfg.epochs, repeats=cfg.latency_repeats)}
    json_paths = [out / "report.json"] + ([Path(cfg.report_json)] if cfg.report_json else [])
    models: dict[str, SentenceEncoderModule] = {}
    clock = time.perf_counter()

    def stage(name: str, model: SentenceEncoderModule | None, scores: dict | None, **extra) -> None:
        nonlocal clock
        if model is not None:
            models[name] = model
            report["rows"].append({"name": name, **(scores or {}), **extra})
        report["stages_seconds"][name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        write_report(report, json_paths)
        log.info(f"[sts] {name}: {scores} ({report['stages_seconds'][name]} s)")

    stage("teacher", teacher, sts_scores(teacher, dm))
    cache = teacher.encode(dm.sentences, normalized=False)
    stage("teacher embedding cache", None, None)
    kept = choose_layers(teacher, dm, cfg) if cfg.drop_layers else None
    pruned = new(keep_layers=kept)
    unpruned = copy.deepcopy(pruned) if cfg.prune_steps > 1 else None  # where iterative pruning starts
    shape = {**({"encoder_layers": kept} if kept else {}), **prune_by_taylor(pruned, dm, cfg, teacher.bert.cfg)}
    stage("pruned, no distillation", pruned, sts_scores(pruned, dm), **shape)
    if cfg.prune_steps == 1:
        student = copy.deepcopy(pruned)
        attach_teacher(student, teacher)  # the in-memory teacher, not a path to load again
        metrics = distil(student, dm, cfg, "pruned_distilled", cache)
    else:
        student, metrics, student_shape = prune_and_distil_iteratively(unpruned, teacher, dm, cfg, cache)
    save_module_checkpoint(student, out / "student.ckpt")
    final_shape = {**shape, **student_shape} if cfg.prune_steps > 1 else shape
    stage("pruned + distilled", student, _as_scores(metrics), **final_shape, checkpoint=str(out / "student.ckpt"))
    if cfg.baselines and cfg.random_init_baseline:
        scratch = reinitialise_module(copy.deepcopy(pruned))
        attach_teacher(scratch, teacher)
        stage("same size, random init + distilled", scratch,
              _as_scores(distil(scratch, dm, cfg, "random_init_distilled", cache)), **shape)
    if cfg.baselines:
        for keep in cfg.drop_layers_keep:
            dropped = new(keep_layers=keep)
            attach_teacher(dropped, teacher)
            stage(f"layers {keep} kept + distilled", dropped,
                  _as_scores(distil(dropped, dm, cfg, f"layer_drop_{len(keep)}_distilled", cache)), kept_layers=keep)
    _measure(report, models, latency_inputs(dm, cfg.latency_batch_sizes), cfg.latency_repeats)
    report["equal_speed"] = [equal_speed_comparison(report["rows"], b) for b in cfg.latency_batch_sizes]
    stage("size and latency", None, None)
    return report


def reinitialise_module(module: SentenceEncoderModule) -> SentenceEncoderModule:
    """The module with freshly initialised encoder weights (same, possibly pruned, shapes)."""
    reinitialise(module.bert)
    return module


def _steps_phrase(cfg: PipelineConfig) -> str:
    """How the pruning was done beyond one-shot unit ranking, for the report's notes."""
    phrase = ""
    if cfg.drop_layers:
        phrase += (f"; first the {cfg.drop_layers} whole layer(s) whose removal raises the STS loss least, "
                   "counted in the fractions")
    if cfg.head_multiple > 1 or cfg.ffn_multiple > 1:
        phrase += f"; widths in blocks of {cfg.head_multiple} heads / {cfg.ffn_multiple} FFN neurons"
    if cfg.prune_steps > 1:
        phrase += (f"; the distilled student in {cfg.prune_steps} rounds of re-scoring, pruning and "
                   f"{cfg.epochs // cfg.prune_steps} distillation epoch(s), the other rows in one shot")
    return phrase


def _as_scores(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/spearman_")}


def _measure(report: dict, models: dict[str, SentenceEncoderModule], inputs: dict[int, dict], repeats: int) -> None:
    timed = latency(models, inputs, repeats)
    report["latency_threads"] = timed.threads
    flops_batch = inputs[16] if 16 in inputs else next(iter(inputs.values()))
    report["flops_batch_size"] = 16 if 16 in inputs else next(iter(inputs))
    teacher_en = report["rows"][0].get("spearman_en")
    for row in report["rows"]:
        model = models[row["name"]]
        counts = parameter_counts(model.bert)
        row["params"], row["params_non_embedding"] = counts["total"], counts["non_embedding"]
        row["flops"] = flops_per_token(model, flops_batch)
        row["latency_ms"] = {str(b): ms for b, ms in timed.ms[row["name"]].items()}
        row["speedup"] = {str(b): timed.speedup(row["name"], "teacher", b) for b in timed.batch_sizes}
        if 16 in timed.batch_sizes:
            row["speedup_b16"] = row["speedup"]["16"]
        if teacher_en and "spearman_en" in row:
            row["quality_vs_teacher"] = 100 * row["spearman_en"] / teacher_en
