"""Multi30k word-level KD benchmark (issue 4): a half-depth student with and without distillation.

    python -m benchmarks.compression.nmt_kd --epochs 4                 # full: teacher + two students, test2016 BLEU
    python -m benchmarks.compression.nmt_kd --smoke --out /tmp/nmt_kd.json   # < 2 min check

Teacher: the small base (d 256, 3+3 layers) checkpoint, `--teacher`. Student: half the layers,
2 encoder + 1 decoder (deep encoder / shallow decoder keeps more quality per decoding cost,
Kasai et al. 2021), same width and vocabulary. Both students start from the same teacher layers
(`compression.student.init_from_teacher_layers`): embeddings and final norms copied, and the
teacher layers given by `--encoder-layers` / `--decoder-layers`, or (default) the combination with
the lowest teacher-forced KD loss on a few validation batches before training. Then:
  kd      word-level KD, kd_alpha * T^2 * KL(teacher || student) + (1 - kd_alpha) * label-smoothed CE,
          over real target positions (the teacher runs live: caching full-vocabulary logits would take
          ~13 GB for Multi30k, unlike NER's 9 labels);
  no_kd   the same student, label-smoothed CE only.
Same epochs, schedule (warm-up + linear decay, `--peak-lr`) and batches for both. Each row: parameters,
test2016 BLEU / chrF with beam 5 (sacreBLEU signature), beam-5 decoding speed vs the teacher (same
sentences, timed alternately, medians), epochs, minutes.
Writes `benchmarks/results/compression/nmt_kd.json` after every row; rows already there are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import yaml

from benchmarks.common import open_results, quiet_trainer, write_results
from compression.distill import kd_loss
from compression.measure import parameter_counts
from compression.student import KDConfig, init_from_teacher_layers, load_teacher
from core.schedules import TriangleSchedule
from nmt.data import TranslationDataModule
from nmt.module import DecodingConfig, TranslationModule, corpus_scores
from nmt.translate import translate_lines

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEACHER = ROOT / "benchmarks/work/nmt_multi30k/nmt_small/version_1/checkpoints/swa.ckpt"
ROWS = ("teacher", "kd", "no_kd")


def student(teacher: TranslationModule, dm: TranslationDataModule, layers: dict, kd: bool, args) -> TranslationModule:
    """A half-depth TranslationModule whose weights start from the chosen teacher layers."""
    arch = {**asdict(teacher.cfg), "encoder_layers": len(layers["encoder"]), "decoder_layers": len(layers["decoder"])}
    for key in asdict(dm.spec()):
        arch.pop(key)
    hp = teacher.hparams
    module = TranslationModule(
        arch=arch, optimizer=teacher.optimizer_config, label_smoothing=hp.label_smoothing, data_spec=dm.spec(),
        decoding=DecodingConfig(test_beam_size=5),
        kd=KDConfig(teacher=str(args.teacher), alpha=args.kd_alpha, temperature=args.kd_temperature) if kd else None)
    init_from_teacher_layers(module.model, teacher.model, layers)
    return module


def pick_layers(teacher: TranslationModule, dm: TranslationDataModule, args) -> tuple[dict, dict]:
    """Teacher layers (2 encoder, 1 decoder) whose untrained student has the lowest KD loss on val batches."""
    batches = list(itertools.islice(iter(dm.val_dataloader()), args.pick_batches))
    n_enc, n_dec = len(teacher.model.encoder), len(teacher.model.decoder)
    candidates = [{"encoder": list(e), "decoder": [d]}
                  for e in itertools.combinations(range(n_enc), n_enc - 1) for d in range(n_dec)]
    losses = {}
    with torch.no_grad():
        for layers in candidates[: args.max_candidates]:
            model = student(teacher, dm, layers, kd=False, args=args).model.eval()
            losses[json.dumps(layers)] = statistics.mean(
                float(kd_loss(model(b["src"], b["tgt_in"]), teacher.model(b["src"], b["tgt_in"]), b["tgt_out"],
                              temperature=args.kd_temperature, alpha=1.0, ignore_index=teacher.cfg.pad_id))
                for b in batches)
    return json.loads(min(losses, key=losses.get)), losses


def test_scores(module: TranslationModule, src: list[str], refs: list[str]) -> dict:
    """test2016 BLEU / chrF with beam 5 and decoding speed."""
    module.eval()
    start = time.perf_counter()
    hyps = translate_lines(module, src, beam_size=5)
    seconds = time.perf_counter() - start
    return {**corpus_scores(hyps, refs), "beam_size": 5, "sents_per_s": len(src) / seconds, "samples": hyps[:3]}


def decode_speedup(module: TranslationModule, teacher: TranslationModule, src: list[str], repeats: int) -> dict:
    """Beam-5 decoding of the same sentences by the row and the teacher, timed alternately (medians)."""
    mine, theirs = [], []
    for _ in range(repeats):
        for model, times in ((module, mine), (teacher, theirs)):
            start = time.perf_counter()
            translate_lines(model.eval(), src, beam_size=5)
            times.append(time.perf_counter() - start)
    return {"sents_per_s": len(src) / statistics.median(mine),
            "teacher_sents_per_s": len(src) / statistics.median(theirs),
            "speedup": statistics.median(theirs) / statistics.median(mine), "sentences": len(src)}


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    p.add_argument("--config", type=Path, default=ROOT / "configs/nmt/small.yaml", help="the teacher's data settings")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--peak-lr", type=float, default=5e-4, help="students start from teacher layers: below 1e-3")
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--encoder-layers", type=int, nargs="+", default=None, help="teacher layers (default: auto)")
    p.add_argument("--decoder-layers", type=int, nargs="+", default=None, help="teacher layers (default: auto)")
    p.add_argument("--pick-batches", type=int, default=4)
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--redo", nargs="*", default=[])
    p.add_argument("--limit-train-batches", type=int, default=None,
                   help="training batches per epoch (the vocabulary is always built from all pairs, as the teacher's)")
    p.add_argument("--test-sentences", type=int, default=None, help="first N test2016 sentences")
    p.add_argument("--speed-sentences", type=int, default=200, help="test sentences for the side-by-side speed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="10 batches, 1 epoch, 2 layer choices, 50 test sentences")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compression/nmt_kd.json")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    args.max_candidates = None
    if args.smoke:
        args.limit_train_batches, args.test_sentences, args.epochs, args.pick_batches = 10, 50, 1, 1
        args.max_candidates, args.speed_sentences, args.repeats = 2, 16, 1
    if (args.encoder_layers is None) != (args.decoder_layers is None):
        p.error("give both --encoder-layers and --decoder-layers, or neither (auto)")
    return args


def main() -> None:
    """Teacher row, then the KD and no-KD students; the JSON is rewritten after every row."""
    args = parse_args()
    config = yaml.safe_load(args.config.read_text())
    dm = TranslationDataModule(**config["data"]["init_args"])
    dm.setup()
    teacher = load_teacher(TranslationModule, args.teacher)
    teacher.vocab = teacher.vocab or dm.vocab
    if teacher.vocab.to_state() != dm.vocab.to_state():
        raise ValueError(f"the SentencePiece models built from {args.config} differ from the teacher's "
                         f"({args.teacher}): use the teacher's data settings")
    src = (dm.root / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()[: args.test_sentences]
    refs = (dm.root / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()[: args.test_sentences]
    results = open_results(args, "Multi30k en-de word-level KD into a half-depth student (issue 4)", ("smoke",))

    def save() -> None:
        write_results(args.out, results)

    if args.encoder_layers is not None:
        layers = {"encoder": args.encoder_layers, "decoder": args.decoder_layers}
    elif "layers" in results:
        layers = results["layers"]
    else:
        layers, results["kd_loss_before_training"] = pick_layers(teacher, dm, args)
    results["layers"] = layers
    log.info(f"[student] teacher layers {layers}")
    for name in args.rows:
        if name in {r["name"] for r in results["rows"]} and name not in args.redo:
            log.info(f"[{name}] already in {args.out}, skipped")
            continue
        L.seed_everything(1234)
        start, epochs = time.perf_counter(), 0
        module = teacher
        if name != "teacher":
            module, epochs = student(teacher, dm, layers, kd=name == "kd", args=args), args.epochs
            quiet_trainer(args.progress, max_epochs=epochs, gradient_clip_val=1.0, enable_checkpointing=False,
                          limit_val_batches=0, num_sanity_val_steps=0, limit_train_batches=args.limit_train_batches,
                          callbacks=[TriangleSchedule(peak_lr=args.peak_lr, warmup=0.06)]).fit(module, dm)
        row = {"name": name, "params": parameter_counts(module.model), "epochs": epochs,
               "train_minutes": (time.perf_counter() - start) / 60, "kd": name == "kd",
               "test2016": test_scores(module, src, refs)}
        row["test_bleu"] = row["test2016"]["bleu"]
        if name != "teacher":
            row["decode_vs_teacher"] = decode_speedup(module, teacher, src[: args.speed_sentences], args.repeats)
        results["rows"] = sorted([r for r in results["rows"] if r["name"] != name] + [row],
                                 key=lambda r: ROWS.index(r["name"]))
        save()
        log.info("%s", json.dumps({k: row[k] for k in ("name", "params", "test_bleu", "train_minutes")}))


if __name__ == "__main__":
    main()
