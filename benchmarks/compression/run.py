"""CoNLL-2003 compression benchmark (issue 4): shrink a fine-tuned MiniLM tagger four ways, score each.

    python -m benchmarks.compression.run --teacher RUN/checkpoints/best-2.ckpt            # full table
    python -m benchmarks.compression.run --teacher T.ckpt --smoke --out /tmp/ner_cmp.json  # < 1 min check

Rows (the teacher is the fine-tuned tagger; every student starts from its weights, `init_from`):
  teacher             the checkpoint itself, no training.
  emb_h64             word embedding SVD-factorised to rank 64 (30522x64 then 64x384), fine-tuned. The
                      SVD is weighted by sqrt(1 + count) of each token in the training data (the
                      weighted-norm optimum), here and in every row with the rank-64 embedding.
  svd_linear_emb_h64  + every encoder nn.Linear SVD-factorised to one rank (`--linear-rank`, default
                      the largest giving >= 2x fewer encoder parameters), fine-tuned. The SVD is
                      activation-aware: it best preserves each layer's outputs on the inputs of
                      `--calibration-batches` training batches (untuned dev F1 0.840 vs 0.693
                      plain: benchmarks.compression.svd_init).
  kd_student_6m       `--student-layers` of the teacher's 6 layers (auto: the pair with the lowest
                      KD loss before training) + rank-64 embedding, <= 6M parameters, distilled.
  student_6m_no_kd    the same student trained with cross-entropy only (what KD adds).
  kd_shared_1x6       ALBERT sharing: one teacher layer (auto: lowest KD loss before training) applied
                      6 times, distilled.
Fine-tuning rows use the same KD loss as the students (kd_alpha * T^2 * KL + (1 - kd_alpha) * CE):
it only needs the cached teacher logits. Teacher logits are cached on disk (`--cache-dir`, keyed by
the teacher file's SHA-256), so the teacher runs once per training example over all rows.

Each row: parameters (total / embedding / non-embedding, encoder), FLOPs per token, dev/test
word-level F1 (seqeval; argmax or, with `--constrained`, IOB2-constrained Viterbi decoding for
every row and the teacher alike), F1 drop vs the teacher, tagging speed at batch 1 and 32 measured
alternately with the teacher on the same test sentences (median; speedup = teacher time / row
time), epochs, wall time, and whether the saved checkpoint reloads alone with identical tags.
`benchmarks/results/compression/ner_compression.json` (+ `.md`) is rewritten after every row; rows already in it
are skipped on a re-run (`--redo NAME` to recompute).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import open_results, quiet_trainer, write_results
from compression.factorize import (
    factorize_embedding,
    factorize_linears,
    input_second_moments,
    token_frequency_weights,
)
from compression.measure import flops_per_token, parameter_counts
from compression.student import KDConfig, load_teacher
from core.config import load_module
from core.schedules import TriangleSchedule
from core.swa import SWA
from core.training import git_commit, save_module_checkpoint
from ner.data import CoNLLDataModule
from ner.module import TaggerModule

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("teacher", "emb_h64", "svd_linear_emb_h64", "kd_student_6m", "student_6m_no_kd", "kd_shared_1x6")
EMB_RANK = 64
LINEARS = r"^layers\."  # every nn.Linear of the encoder layers (fused QKV, output, FFN)
STUDENT_BUDGET = 6_000_000


def load_for_scoring(path: Path) -> TaggerModule:
    """A saved tagger alone (no teacher), in eval mode, decoding with IOB2 constraints."""
    model = load_module(TaggerModule, path, kd=None)
    model.constrained_decoding = True
    return model.eval()


def rank_for_reduction(bert: torch.nn.Module, pattern: str, factor: float = 2.0) -> int:
    """Largest single rank r for the nn.Linear layers matching `pattern` that leaves the encoder
    (non-embedding parameters, biases and LayerNorms staying dense) at least `factor` times smaller."""
    linears = [m for name, m in bert.named_modules() if isinstance(m, torch.nn.Linear) and re.search(pattern, name)]
    before = parameter_counts(bert)["non_embedding"]
    rest = before - sum(m.weight.numel() for m in linears)
    return int((before / factor - rest) // sum(m.in_features + m.out_features for m in linears))


def tag_seconds(model: TaggerModule, sentences: list[list[str]], batch: int) -> float:
    """Wall seconds of `model.tag` over `sentences` at `batch` sentences per batch."""
    start = time.perf_counter()
    model.tag(sentences, batch_size=batch)
    return time.perf_counter() - start


def speed_vs_teacher(model: TaggerModule, teacher: TaggerModule, sentences: list[list[str]], repeats: int) -> dict:
    """Tagging sentences/s of the row and the teacher at batch 1 and 32, timed alternately (medians)."""
    out = {}
    for batch in (1, 32):
        mine, theirs = [], []
        tag_seconds(model, sentences[:8], batch)  # warm-up
        for _ in range(repeats):
            mine.append(tag_seconds(model, sentences, batch))
            theirs.append(tag_seconds(teacher, sentences, batch))
        out[f"batch_{batch}"] = {"sents_per_s": len(sentences) / statistics.median(mine),
                                 "teacher_sents_per_s": len(sentences) / statistics.median(theirs),
                                 "speedup": statistics.median(theirs) / statistics.median(mine)}
    return out


def kd_loss_before_training(model: TaggerModule, batches: list[dict]) -> float:
    """Mean pure-KD loss (alpha 1) against the teacher on a few training batches, eval mode."""
    model.eval()
    kd = model.kd
    model.kd = replace(kd, alpha=1.0)
    with torch.no_grad():
        loss = statistics.mean(float(model.training_loss(b)) for b in batches)
    model.kd = kd
    return loss


def build(args: argparse.Namespace, dm: CoNLLDataModule, teacher: TaggerModule, kd: bool, **kw) -> TaggerModule:
    """A student starting from the teacher checkpoint's weights (same casing and architecture)."""
    return TaggerModule(
        bert_config=teacher.bert.cfg.to_dict(), casing=teacher.hparams.casing, dropout=0.1, data_spec=dm.spec(),
        init_from=str(args.teacher), constrained_decoding=args.constrained, embedding_lr_scale=args.embedding_lr_scale,
        kd=KDConfig(teacher=str(args.teacher), alpha=args.kd_alpha, temperature=args.kd_temperature,
                    cache=str(args.cache_dir), hidden_weight=args.hidden_weight) if kd else None, **kw)


def pick(args: argparse.Namespace, dm: CoNLLDataModule, teacher: TaggerModule, candidates: list, key: str) -> tuple:
    """The candidate (layer index or list) whose untrained student has the lowest KD loss; all losses."""
    batches = list(itertools.islice(iter(dm.train_dataloader()), args.pick_batches))
    losses = {}
    for c in candidates[: args.max_candidates]:
        if key == "share":
            model = build(args, dm, teacher, kd=True, student={"share_layers": {"k": 1, "n": 6, "init_from": c}})
        else:
            model = with_factorised_embedding(build(args, dm, teacher, kd=True, student={"keep_layers": list(c)}), args)
        losses[str(c)] = kd_loss_before_training(model, batches)
    best = min(candidates[: args.max_candidates], key=lambda c: losses[str(c)])
    return best, losses


def calibration_moments(model: TaggerModule, dm: CoNLLDataModule, batches: int) -> dict | None:
    """X X^T of the inputs of every encoder linear (LINEARS) over the first `batches` training
    batches, in eval mode, for activation-aware SVD; None (plain SVD) for 0 batches."""
    if not batches:
        return None
    model.eval()
    return input_second_moments(model.bert, LINEARS, itertools.islice(iter(dm.train_dataloader()), batches),
                                lambda b: model(b["input_ids"], b["attention_mask"], b["casing"]))


def with_factorised_embedding(model: TaggerModule, args: argparse.Namespace) -> TaggerModule:
    """`model` with its word embedding replaced by the rank-EMB_RANK SVD weighted by training-token
    frequency (after construction, so the compression spec records it and the checkpoint reloads)."""
    factorize_embedding(model.bert, EMB_RANK, row_weights=args.embedding_row_weights)
    return model


def make_row(name: str, args: argparse.Namespace, dm: CoNLLDataModule, teacher: TaggerModule,
             done_rows: list[dict]) -> tuple:
    """(model, epochs, peak_lr, notes) for a row name; `done_rows` are the rows already measured."""
    if name == "emb_h64":
        return with_factorised_embedding(build(args, dm, teacher, kd=True), args), args.finetune_epochs, \
            args.finetune_lr, {}
    if name == "svd_linear_emb_h64":
        model = build(args, dm, teacher, kd=True)
        rank = args.linear_rank or rank_for_reduction(model.bert, LINEARS)
        before = parameter_counts(model.bert)["non_embedding"]
        with_factorised_embedding(model, args)
        moments = calibration_moments(model, dm, args.calibration_batches)  # activation-aware: real inputs
        factorize_linears(model.bert, LINEARS, rank, input_moments=moments)
        after = parameter_counts(model.bert)["non_embedding"]
        return model, args.finetune_epochs, args.finetune_lr, {
            "linear_rank": rank, "calibration_batches": args.calibration_batches,
            "encoder_params_before": before, "encoder_params_after": after,
            "encoder_reduction": before / after}
    if name in ("kd_student_6m", "student_6m_no_kd"):
        layers, notes = args.student_layers, {}
        same = [r["teacher_layers"] for r in done_rows if r["name"] in ("kd_student_6m", "student_6m_no_kd")]
        if layers is None and same:  # the KD and no-KD rows compare one student
            layers = same[0]
        if layers is None:
            layers, notes["kd_loss_before_training"] = pick(
                args, dm, teacher, list(itertools.combinations(range(len(teacher.bert.layers)), 2)), "keep")
        model = with_factorised_embedding(build(args, dm, teacher, kd=name.startswith("kd"),
                                                student={"keep_layers": list(layers)}), args)
        total = parameter_counts(model)["total"]
        if total > STUDENT_BUDGET:
            raise ValueError(f"student with layers {layers} has {total:,} parameters > {STUDENT_BUDGET:,}")
        return model, args.student_epochs, args.student_lr, {"teacher_layers": list(layers), **notes}
    if name == "kd_shared_1x6":
        layer, notes = args.shared_layer, {}
        if layer is None:
            layer, notes["kd_loss_before_training"] = pick(args, dm, teacher, list(range(len(teacher.bert.layers))),
                                                           "share")
        model = build(args, dm, teacher, kd=True, student={"share_layers": {"k": 1, "n": 6, "init_from": layer}})
        return model, args.shared_epochs, args.shared_lr, {"teacher_layer": layer, **notes}
    raise ValueError(f"unknown row {name!r}; rows are {ROWS}")


def evaluate(name: str, model: TaggerModule, teacher: TaggerModule, dm: CoNLLDataModule, args) -> dict:
    """Dev/test F1, sizes, FLOPs per token and speed vs the teacher."""
    trainer = quiet_trainer(enable_checkpointing=False)
    [dev] = trainer.validate(model, dm, verbose=False)
    [test] = trainer.test(model, dm, verbose=False)
    sentences = [s.tokens for s in dm.sentences["test"][: args.speed_sentences]]
    example = next(iter(dm.test_dataloader()))
    inputs = (example["input_ids"], example["attention_mask"], example["casing"])
    return {
        "name": name, "params": parameter_counts(model),
        "encoder_params": parameter_counts(model.bert)["non_embedding"],
        "flops_per_token": flops_per_token(model.eval(), inputs),
        "dev_f1": dev["val/f1"], "test_f1": test["test/f1"],
        "test_f1_per_type": {k.removeprefix("test/f1_"): v for k, v in test.items() if k.startswith("test/f1_")},
        "infer_sents_per_s": speed_vs_teacher(model, teacher, sentences, args.repeats),
    }


def train(model: TaggerModule, dm: CoNLLDataModule, epochs: int, peak_lr: float, args) -> float:
    """Fit with a warm-up/linear-decay schedule (and, with `--swa-last-fraction`, the weights averaged
    over that last fraction of the epochs); returns minutes."""
    start = time.perf_counter()
    callbacks = [TriangleSchedule(peak_lr=peak_lr, warmup=0.1)]
    if args.swa_last_fraction:
        callbacks.append(SWA(last_fraction=args.swa_last_fraction))
    trainer = quiet_trainer(args.progress, max_epochs=epochs, gradient_clip_val=1.0, enable_checkpointing=False,
                            num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, dm)
    if model.logit_cache is not None:
        model.logit_cache.save()
        log.info(f"[kd cache] {model.logit_cache.hits} hits, {model.logit_cache.misses} misses")
    return (time.perf_counter() - start) / 60


def reloads_identically(model: TaggerModule, dm: CoNLLDataModule, path: Path) -> bool:
    """Save the model part of a Lightning checkpoint, load it from the file alone, compare test tags."""
    save_module_checkpoint(model, path)
    loaded = TaggerModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    sentences = [s.tokens for s in dm.sentences["test"][:64]]
    return loaded.tag(sentences) == model.tag(sentences)


def markdown(results: dict) -> str:
    """The results table (one line per row) with the settings above it."""
    lines = [f"# CoNLL-2003 compression (teacher `{results['teacher']}`)", "",
             f"git `{results['git_commit']}`; test/dev = eng.testb/eng.testa, word-level entity F1 (seqeval), "
             f"{'IOB2-constrained Viterbi' if results['settings'].get('constrained') else 'argmax'} decoding; "
             "speed = `TaggerModule.tag` sentences/s, speedup vs the teacher timed alternately (median).", "",
             "| row | params (total / emb / non-emb) | test F1 | drop | dev F1 | tag sent/s b1 / b32 (speedup) "
             "| epochs | minutes | reloads |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        p, s = r["params"], r["infer_sents_per_s"]
        lines.append(
            f"| {r['name']} | {p['total'] / 1e6:.2f}M / {p['embedding'] / 1e6:.2f}M / {p['non_embedding'] / 1e6:.2f}M "
            f"| {r['test_f1']:.4f} | {r['f1_drop']:.4f} | {r['dev_f1']:.4f} "
            f"| {s['batch_1']['sents_per_s']:.0f} / {s['batch_32']['sents_per_s']:.0f} "
            f"({s['batch_1']['speedup']:.2f}x / {s['batch_32']['speedup']:.2f}x) | {r['epochs']} "
            f"| {r['train_minutes']:.1f} | {r.get('reload_identical', '-')} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="fine-tuned TaggerModule checkpoint")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--redo", nargs="*", default=[], help="rows to recompute even if in the JSON")
    p.add_argument("--finetune-epochs", type=int, default=1, help="emb_h64 and svd_linear_emb_h64")
    p.add_argument("--student-epochs", type=int, default=5, help="kd_student_6m and student_6m_no_kd")
    p.add_argument("--shared-epochs", type=int, default=3, help="kd_shared_1x6")
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="peak rate of the fine-tuning rows")
    p.add_argument("--shared-lr", type=float, default=3e-4,
                   help="peak rate of the shared student (one layer reused 6 times moves far from the teacher)")
    p.add_argument("--student-lr", type=float, default=3e-4, help="peak rate of the 6M students")
    p.add_argument("--linear-rank", type=int, default=None, help="default: largest rank with >= 2x fewer params")
    p.add_argument("--calibration-batches", type=int, default=32,
                   help="training batches whose layer inputs make svd_linear_emb_h64 activation-aware (0: plain SVD)")
    p.add_argument("--student-layers", type=int, nargs=2, default=None, help="teacher layers (default: auto)")
    p.add_argument("--shared-layer", type=int, default=None, help="teacher layer to share (default: auto)")
    p.add_argument("--pick-batches", type=int, default=8, help="training batches for the auto layer choice")
    p.add_argument("--constrained", action="store_true",
                   help="score every row, teacher included, with IOB2-constrained Viterbi decoding")
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--hidden-weight", type=float, default=0.0,
                   help="weight of the hidden-state alignment to the teacher in every KD row (0: logits only)")
    p.add_argument("--embedding-lr-scale", type=float, default=1.0,
                   help="word-embedding rows train undecayed at this multiple of the rate (TaggerModule)")
    p.add_argument("--seed", type=int, default=1234,
                   help="dropout and initial weights of new layers (data order, entity swaps and the SVD start "
                        "do not change: the data module's own seed)")
    p.add_argument("--entity-swap-copies", type=int, default=0,
                   help="copies of each training sentence with its entity words swapped for pseudo-words (ner.augment)")
    p.add_argument("--swa-last-fraction", type=float, default=None,
                   help="average the weights at the end of this last fraction of each row's epochs (core.swa)")
    p.add_argument("--max-sentences", type=int, default=None, help="first N training sentences")
    p.add_argument("--max-eval-sentences", type=int, default=None, help="first N dev/test sentences")
    p.add_argument("--speed-sentences", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="32 sentences, 1 epoch, 2 layer choices, tiny speed runs")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "benchmarks/work/kd_cache")
    p.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks/work/ner_compression")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compression/ner_compression.json")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    args.max_candidates = None  # all layer choices are tried (the smoke run tries two)
    if args.smoke:
        args.max_sentences, args.max_eval_sentences, args.speed_sentences, args.repeats = 32, 32, 8, 1
        args.finetune_epochs = args.student_epochs = args.shared_epochs = 1
        args.pick_batches, args.max_candidates, args.calibration_batches = 1, 2, 1
    return args


def main() -> None:
    """Run the rows, rewriting the JSON and markdown after each."""
    args = parse_args()
    L.seed_everything(args.seed)
    launch_commit = git_commit()  # the code that runs (later commits during a long run do not count)
    teacher = load_teacher(TaggerModule, args.teacher)
    teacher.constrained_decoding = args.constrained
    dm = CoNLLDataModule(max_sentences=args.max_sentences, max_eval_sentences=args.max_eval_sentences,
                         entity_swap_copies=args.entity_swap_copies)
    dm.setup()
    results = open_results(args, "CoNLL-2003 compression of a fine-tuned tagger (issue 4)",
                           same_settings=("constrained",))
    # The rank-64 embedding spends its rank on the tokens CoNLL uses: SVD weighted by sqrt(1 + count).
    originals = len(dm.sentences["train"])  # not the entity-swapped copies: the SVD start stays the same
    args.embedding_row_weights = token_frequency_weights(
        [e.input_ids for e in dm.examples["train"] if e.sentence < originals], teacher.bert.cfg.vocab_size)

    def save() -> None:
        write_results(args.out, results, markdown(results))

    for name in args.rows:
        done = {r["name"]: r for r in results["rows"]}
        if name in done and name not in args.redo:
            log.info(f"[{name}] already in {args.out}, skipped")
            continue
        L.seed_everything(args.seed)  # every row starts from the same state, whichever rows run
        if name == "teacher":
            model, epochs, minutes, notes = teacher, 0, 0.0, {}
        else:
            model, epochs, lr, notes = make_row(name, args, dm, teacher, results["rows"])
            log.info(f"[{name}] {parameter_counts(model)['total']:,} parameters, {epochs} epoch(s), {notes}")
            minutes = train(model, dm, epochs, lr, args)
        row = {**evaluate(name, model, teacher, dm, args), "epochs": epochs, "train_minutes": minutes,
               "git_commit": launch_commit, "command": " ".join(sys.argv[1:]),
               "kd": model.teacher is not None, "kd_hidden_weight": model.hparams.get("kd_hidden_weight", 0.0),
               "embedding_lr_scale": model.hparams.get("embedding_lr_scale", 1.0), "seed": args.seed,
               "entity_swap_copies": args.entity_swap_copies, "swa_last_fraction": args.swa_last_fraction, **notes}
        if name != "teacher":
            row["reload_identical"] = reloads_identically(model, dm, args.work_dir / f"{name}.ckpt")
        teacher_f1 = next((r["test_f1"] for r in results["rows"] if r["name"] == "teacher"), row["test_f1"])
        row["f1_drop"] = teacher_f1 - row["test_f1"]  # positive: worse than the teacher
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [row]
        results["rows"].sort(key=lambda r: ROWS.index(r["name"]))
        save()
        log.info("%s", json.dumps({k: row[k] for k in ("name", "params", "test_f1", "f1_drop", "dev_f1")}))
    log.info("%s", markdown(results))


if __name__ == "__main__":
    main()
