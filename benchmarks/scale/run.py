"""Scale-out measurements: sharded validation, the list-based and the `datasets` data paths, bf16 training.

    python -m benchmarks.scale.run [--stages validate bf16 throughput data bf16_full recipe ensemble] [--repeats 3]

* **validate**: the shared Multi30k teacher (`configs/nmt/small.yaml`, greedy val, the whole val split) validated
  by 1 process with 1 thread (one device), 2 DDP processes (gloo, 1 thread each: two devices, each decoding its
  share, metrics reduced by torchmetrics) and 1 process with 2 threads, in turn in fresh processes
  (`benchmarks.scale.validate_probe`): the first (cold) validation loop's wall time and the later (warm) ones'.
* **data**: a synthetic 4.5M-pair corpus (`benchmarks.scale.make_corpus`, Multi30k train with deterministic
  noise); the translation datamodule on it with `source: text` (Python lists) and `source: datasets` (Arrow,
  memory-mapped), each from empty caches (SentencePiece training and encoding included) and from warm ones, in
  fresh processes (`benchmarks.scale.probe`): seconds to the first training batch, peak RSS, PSS after 200
  batches.
* **bf16**: `configs/nmt/small.yaml` trained for `--train_steps` steps in fp32 and in bf16-mixed (CPU autocast),
  alternating fresh processes (`benchmarks.scale.train_probe`): target tokens per second of the training loop.
* **throughput**: the same fp32 run reading Multi30k from Python lists and from the `datasets` Arrow cache.
* **bf16_full**: `make train` in bf16-mixed (one run per `--seeds`), test2016 against the fp32 shared teacher's
  (re-scored).
* **recipe**: the bf16 recipe `configs/nmt/bf16_2h.yaml` (the 2-hour budget) to the end.
* **ensemble**: the bf16 ensemble recipe (`configs/nmt/bf16_ensemble_sweep.yaml`): the bf16_full runs decoded together.
Writes `benchmarks/results/scale/scale.json` after every stage (+ scale.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import run_stages
from core.training import git_commit

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks/work/scale"
RESULT = REPO / "benchmarks/results/scale/scale.json"
SHARED_NMT = REPO.parent / "shared/checkpoints/nmt_small_swa.ckpt"
RECIPE_BUDGET_MINUTES = 120  # the training budget for a bf16 recipe on this CPU
FP32_TRAIN_MINUTES = 67  # `make train` of the shared teacher on this machine (its README)
log = logging.getLogger(__name__)


VALIDATE_SETUPS = {"1 process, 1 thread": (1, 1), "2 DDP processes (gloo), 1 thread each": (2, None),
                   "1 process, 2 threads": (1, 2)}


def validate_once(processes: int, threads: int | None, out: Path) -> dict:
    """`benchmarks.scale.validate_probe` in fresh processes: its JSON line (cold and warm validation seconds,
    scores). `threads` None lets Lightning give each DDP process its share of the cores."""
    cmd = [sys.executable, "-m", "benchmarks.scale.validate_probe", "--config", str(REPO / "configs/nmt/small.yaml"),
           "--fit", "false", "--test", "false", "--ckpt_path", str(SHARED_NMT), "--trainer.logger.init_args.save_dir",
           str(out), "--trainer.enable_progress_bar", "false"]
    if processes > 1:
        cmd += ["--trainer.strategy", "ddp", "--trainer.devices", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def validate_stage(args: argparse.Namespace) -> dict:
    """The setups of `VALIDATE_SETUPS` in turn, `repeats` rounds: the first (cold) validation of each run and the
    later (warm) ones, as every epoch after the first validates in training; the scores must agree."""
    runs: dict[str, list[dict]] = {name: [] for name in VALIDATE_SETUPS}
    for round_ in range(args.repeats):
        for j, (name, (processes, threads)) in enumerate(VALIDATE_SETUPS.items()):
            result = validate_once(processes, threads, WORK / f"validate/s{j}_r{round_}")
            runs[name].append(result)
            log.info("validate, %s, round %d: cold %.1f s, warm %s s, BLEU %.2f", name, round_,
                     result["cold_seconds"], [round(x, 1) for x in result["warm_seconds"]], result["val/bleu"])
    rows = []
    for name, results in runs.items():
        warm = [x for r in results for x in r["warm_seconds"]]
        rows.append({"setup": name, "processes": results[0]["processes"],
                     "threads_per_process": results[0]["threads_per_process"],
                     "cold_seconds": statistics.median(r["cold_seconds"] for r in results),
                     "warm_seconds": statistics.median(warm), "all_cold_seconds": [r["cold_seconds"] for r in results],
                     "all_warm_seconds": warm, "bleu": results[0]["val/bleu"], "chrf": results[0]["val/chrf"],
                     "loss": results[0]["val/loss"], "sentences": results[0]["val/sentences"],
                     "same_scores_every_run": all(r["same_scores_every_validation"] for r in results)
                     and len({(r["val/bleu"], r["val/chrf"], r["val/loss"]) for r in results}) == 1})
    one, two, threaded = rows
    return {"rows": rows, "warm_ratio_2_vs_1": two["warm_seconds"] / one["warm_seconds"],
            "cold_ratio_2_vs_1": two["cold_seconds"] / one["cold_seconds"],
            "warm_ratio_2_processes_vs_2_threads": two["warm_seconds"] / threaded["warm_seconds"],
            "warm_ratio_2_threads_vs_1": threaded["warm_seconds"] / one["warm_seconds"],
            "same_scores_all_setups": len({(r["bleu"], r["chrf"], r["loss"]) for r in rows}) == 1,
            "checkpoint": "../shared/checkpoints/nmt_small_swa.ckpt", "repeats": args.repeats,
            "target": "validation wall time with 2 CPU processes <= 0.6x one process (Multi30k val, greedy)"}


def probe(source: str, corpus: Path, cache: Path) -> dict:
    """`benchmarks.scale.probe` in a fresh process: times to the first batch, memory (or the failure)."""
    cmd = [sys.executable, "-m", "benchmarks.scale.probe", "--dir", str(corpus), "--cache", str(cache),
           "--source", source, "--num_proc", "2"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"source": source, "failed": proc.returncode, "seconds": time.perf_counter() - start,
                "stderr_tail": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured_before(args: argparse.Namespace, stage: str) -> dict:
    """The block `stage` wrote to the result file last time (empty if none): rows a re-run does not redo."""
    return json.loads(args.out.read_text()).get(stage, {}) if args.out.is_file() else {}


def data_stage(args: argparse.Namespace) -> dict:
    """The list-based and the `datasets` path on the synthetic corpus: a first start (empty caches) and a cached
    one each, in fresh processes."""
    from benchmarks.scale.make_corpus import make

    corpus = WORK / "synthetic"
    marker = corpus / f"pairs-{args.pairs}"
    if not marker.is_file():
        log.info("writing the synthetic corpus (%d pairs)", args.pairs)
        make(args.pairs, corpus)
        marker.touch()
    # A path not re-measured (`--sources`) keeps its row from the last run, with the commit that measured it.
    before = measured_before(args, "data")
    rows = {row["source"]: {"git_commit": before.get("git_commit"), **row} for row in before.get("rows", [])}
    for source in args.sources:
        cache = WORK / f"cache_{source}"
        shutil.rmtree(cache, ignore_errors=True)
        row = {"source": source, "git_commit": git_commit(), "first_start": probe(source, corpus, cache)}
        log.info("%s first start %s", source, row["first_start"])
        row["cached_start"] = probe(source, corpus, cache)
        log.info("%s cached start %s", source, row["cached_start"])
        rows[source] = row
    rows = [rows[source] for source in ("datasets", "text") if source in rows]
    return {"rows": rows, "pairs": args.pairs, "corpus": "python -m benchmarks.scale.make_corpus --pairs "
            f"{args.pairs}", "targets": "peak RSS per rank <= 2 GB at 4.5M pairs, cached start <= 60 s"}


def train_once(precision: str, steps: int, out: Path, source: str = "text") -> dict:
    """`benchmarks.scale.train_probe`: `steps` steps of the small config in `precision` reading `source`, in a
    fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.scale.train_probe", "--config", str(REPO / "configs/nmt/small.yaml"),
           "--trainer.precision", precision, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
           "--test", "false", "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar",
           "false", "--data.source", source]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bf16_stage(args: argparse.Namespace) -> dict:
    """fp32 vs bf16-mixed training of `configs/nmt/small.yaml`, alternating fresh processes: target tokens/s."""
    runs: dict[str, list[dict]] = {"32-true": [], "bf16-mixed": []}
    for round_ in range(args.repeats):
        for precision in runs:
            result = train_once(precision, args.train_steps, WORK / f"bf16/{precision}_r{round_}")
            runs[precision].append(result)
            log.info("train %s round %d: %.0f target tokens/s", precision, round_, result["target_tokens_per_s"])
    rows = [{"precision": p, "target_tokens_per_s": statistics.median(r["target_tokens_per_s"] for r in results),
             "all_tokens_per_s": [r["target_tokens_per_s"] for r in results], "steps": results[0]["steps"],
             "target_tokens": results[0]["target_tokens"], "train_loss": results[0]["train_loss"]}
            for p, results in runs.items()]
    return {"rows": rows, "speedup": rows[1]["target_tokens_per_s"] / rows[0]["target_tokens_per_s"],
            "repeats": args.repeats, "target": "bf16-mixed >= 1.4x the fp32 target tokens/s (small config, this CPU)"}


def throughput_stage(args: argparse.Namespace) -> dict:
    """Training tokens/s of the small config on Multi30k read from Python lists (`source: text`) and from the
    memory-mapped Arrow cache (`source: datasets`), fp32, alternating fresh processes."""
    runs: dict[str, list[dict]] = {"text": [], "datasets": []}
    for round_ in range(args.repeats):
        for source in runs:
            result = train_once("32-true", args.train_steps, WORK / f"throughput/{source}_r{round_}", source)
            runs[source].append(result)
            log.info("train from %s round %d: %.0f target tokens/s", source, round_, result["target_tokens_per_s"])
    rows = [{"source": s, "target_tokens_per_s": statistics.median(r["target_tokens_per_s"] for r in results),
             "all_tokens_per_s": [r["target_tokens_per_s"] for r in results], "steps": results[0]["steps"],
             "target_tokens": results[0]["target_tokens"], "train_loss": results[0]["train_loss"]}
            for s, results in runs.items()]
    return {"rows": rows, "ratio_datasets_vs_text": rows[1]["target_tokens_per_s"] / rows[0]["target_tokens_per_s"],
            "same_batches": rows[0]["target_tokens"] == rows[1]["target_tokens"], "repeats": args.repeats,
            "target": "training tokens/s from `datasets` within 5 % of the in-memory path (Multi30k)"}


def full_run(args: list[str], out: Path) -> dict:
    """`train.py --config configs/nmt/small.yaml ARGS` to the end (test2016 with beam 5 after the SWA weights are
    in), in a fresh process: its wall minutes and metrics.json `test` entry."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/nmt/small.yaml"), *args,
           "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log_file:
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log_file,
                       stderr=subprocess.STDOUT, check=True)
    minutes = (time.perf_counter() - start) / 60
    (metrics,) = out.rglob("metrics.json")
    test = json.loads(metrics.read_text())["test"]
    return {"minutes": minutes, "test2016_bleu": test["test/bleu"], "test2016_chrf": test["test/chrf"],
            "args": " ".join(args)}


def member_dir(seed: int) -> Path:
    """Run folder of the bf16_full stage's run with `seed`."""
    return WORK / f"full/bf16_{seed}"


def bf16_full_stage(args: argparse.Namespace) -> dict:
    """`make train` (20 epochs of the small config, SWA) in bf16-mixed, one run per `--seeds`, against the fp32
    run the shared teacher comes from: test2016 sacreBLEU (beam 5) of each, the fp32 one re-scored by today's code.
    Seeds measured before and not asked for again keep their runs."""
    (WORK / "full").mkdir(parents=True, exist_ok=True)
    before = measured_before(args, "bf16_full")
    runs = {run["seed"]: run for run in before.get("bf16_runs", [])}
    fp32 = full_run(["--fit", "false", "--ckpt_path", str(SHARED_NMT)], WORK / "full/fp32_shared_teacher")
    log.info("fp32 (shared teacher) test2016 %.2f", fp32["test2016_bleu"])
    for seed in args.seeds:
        run = full_run(["--trainer.precision", "bf16-mixed", "--seed_everything", str(seed)], member_dir(seed))
        runs[seed] = {"seed": seed, **run, "git_commit": git_commit()}
        log.info("bf16-mixed seed %d: %.1f min, test2016 %.2f", seed, run["minutes"], run["test2016_bleu"])
    bf16_runs = [runs[seed] for seed in sorted(runs)]
    mean_bleu = statistics.mean(run["test2016_bleu"] for run in bf16_runs)
    return {"fp32": {**fp32, "minutes": FP32_TRAIN_MINUTES, "minutes_from": "../shared/checkpoints/README.md"},
            "bf16_runs": bf16_runs, "bf16_mean_bleu": mean_bleu, "bleu_difference": mean_bleu - fp32["test2016_bleu"],
            "target": "the make train-length run in bf16 within 0.3 BLEU of fp32 on test2016"}


def recipe_stage(args: argparse.Namespace) -> dict:
    """The bf16 recipe (`configs/nmt/bf16_2h.yaml` over the small config) to the end: minutes and test2016."""
    (WORK / "full").mkdir(parents=True, exist_ok=True)
    run = full_run(["--config", str(REPO / "configs/nmt/bf16_2h.yaml")], WORK / "full/bf16_2h")
    log.info("bf16 recipe: %.1f min, test2016 %.2f", run["minutes"], run["test2016_bleu"])
    return {**run, "budget_minutes": RECIPE_BUDGET_MINUTES,
            "target": "test2016 sacreBLEU >= 39.5 within 2 hours on this CPU"}


def ensemble_stage(args: argparse.Namespace) -> dict:
    """The bf16 ensemble recipe: the bf16_full stage's runs (`make train` length in bf16, one per seed, their
    minutes from that stage), each re-scored alone and the first k of them decoded as one ensemble
    (`nmt.ensemble`), test2016 beam 5 through `nmt.translate`. The recipe is the largest ensemble whose training
    minutes fit the 2-hour budget."""
    from core.data_dir import resolve_data_dir
    from nmt.ensemble import ensemble_translator
    from nmt.translate import evaluate_file, load_translator

    data = resolve_data_dir(None, "multi30k")
    test_src, test_ref = data / "test_2016_flickr.en", data / "test_2016_flickr.de"
    runs = measured_before(args, "bf16_full").get("bf16_runs", [])
    ckpts = {run["seed"]: next(member_dir(run["seed"]).rglob("swa.ckpt"), None) for run in runs}
    runs = [run for run in runs if ckpts[run["seed"]] is not None]
    if len(runs) < 2:
        raise SystemExit(f"the ensemble stage needs two or more bf16_full runs with checkpoints in {WORK / 'full'}; "
                         "run --stages bf16_full --seeds ... first")
    members = []
    for run in runs:
        alone = evaluate_file(load_translator(ckpts[run["seed"]]), test_src, test_ref, 5)
        members.append({"seed": run["seed"], "minutes": run["minutes"], "test2016_bleu": alone["bleu"],
                        "test2016_chrf": alone["chrf"], "bleu_at_training_end": run["test2016_bleu"]})
        log.info("member seed %d alone: test2016 %.2f", run["seed"], alone["bleu"])
    ensembles = []
    for k in range(2, len(runs) + 1):
        paths = [ckpts[run["seed"]] for run in runs[:k]]
        result = evaluate_file(ensemble_translator([load_translator(p) for p in paths], paths), test_src,
                               test_ref, 5)
        ensembles.append({"seeds": [run["seed"] for run in runs[:k]], "minutes": sum(r["minutes"] for r in runs[:k]),
                          "test2016_bleu": result["bleu"], "test2016_chrf": result["chrf"],
                          "sents_per_s": result["sents_per_s"], "bleu_signature": result["bleu_signature"]})
        log.info("ensemble of %d: %.0f training minutes, test2016 %.2f", k, ensembles[-1]["minutes"], result["bleu"])
    in_budget = [e for e in ensembles if e["minutes"] <= RECIPE_BUDGET_MINUTES]
    return {"members": members, "ensembles": ensembles, "budget_minutes": RECIPE_BUDGET_MINUTES,
            "recipe": in_budget[-1] if in_budget else None,
            "target": "test2016 sacreBLEU >= 39.5 within 2 hours of training on this CPU"}


STAGES = {"validate": validate_stage, "bf16": bf16_stage, "throughput": throughput_stage, "data": data_stage,
          "bf16_full": bf16_full_stage, "recipe": recipe_stage, "ensemble": ensemble_stage}


def main(argv: list[str] | None = None) -> dict:
    """Run the stages, writing the JSON (and markdown) after each."""
    from benchmarks.scale.report import render_result

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=["validate", "bf16", "throughput", "data"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train_steps", type=int, default=150, help="training steps per timed run (bf16 stage)")
    p.add_argument("--pairs", type=int, default=4_500_000, help="synthetic corpus size (data stage)")
    p.add_argument("--sources", nargs="+", choices=("datasets", "text"), default=["datasets", "text"],
                   help="data paths the data stage measures")
    p.add_argument("--seeds", nargs="+", type=int, default=[1234], help="bf16 training seeds (bf16_full stage)")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    return run_stages("scale", STAGES, args, render_result)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
