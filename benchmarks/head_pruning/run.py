"""Attention-head pruning benchmark (issue 5) on the Multi30k teacher and the CoNLL-2003 tagger.

    python -m benchmarks.head_pruning.run --stages curve_nmt gates scratch latency curve_ner \
        --gate_epochs 2 --scratch_epochs 6 --ner_ckpt RUN/checkpoints/best-2.ckpt
    python -m benchmarks.head_pruning.run --smoke        # every stage on tiny slices, < 1-2 minutes

Stages (each appends its section to `benchmarks/results/head_pruning/head_pruning.json` as soon as it has a
row, and rewrites `head_pruning.md`; plots go to `benchmarks/results/*.png`):

1. `curve_nmt`  Michel et al.: test2016 BLEU vs share of ALL heads pruned (one shot), heads
   ranked by Taylor importance (|dL/d mask_h| over `--score_sentences` training pairs) vs
   random (mean over `--random_seeds`). Decoding with `--curve_beam` (1 = greedy).
2. `gates`      Voita et al.: per `--lambdas` entry L (a run of `configs/nmt/gates_l0_sweep.yaml`: an L0
   lambda, `0.1_enc` = encoder gates only), gate fine-tuning from the teacher (`train.py --sweep ... --run L`,
   skipped if its checkpoint exists), then the heads whose eval-time gate is <= `--gate_threshold` are cut out
   (`prune_heads.py --method gates`); heads kept per attention type, test2016 BLEU (beam 5), params,
   FLOPs, latency; with
   `--gate_finetune_epochs N` also the BLEU after N epochs of recovery fine-tuning of the pruned model
   (`--finetune_config`).  `--gate_seed N`: a replicate with another seed, rows `L_seedN`.
3. `scratch`    the same head counts trained from scratch with the teacher's recipe
   (`configs/nmt/small.yaml`) for `--scratch_epochs` epochs (the teacher had 18).
4. `latency`    speed-up of pruned models (Taylor 25/50/75 %, gate models) over the teacher:
   a teacher-forced forward over real test2016 batches of 1/16/64 sentences, the models timed
   in turn on each batch (same inputs), median over batches of the per-batch time ratio;
   next to the FLOP reduction (FLOPs of the same forward) and their ratio.
5. `curve_ner`  the Taylor-vs-random curve for a tagger checkpoint (test F1 on eng.testb).
6. `significance` paired bootstrap of every gates/scratch model's test2016 BLEU against the teacher's
   (`benchmarks.head_pruning.significance`): is a difference of a few tenths real?
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from benchmarks.head_pruning.report import SHORT, heatmap_from_gif, markdown, plot_curve
from benchmarks.head_pruning.significance import stage_significance  # noqa: F401  (a stage, dispatched by name)
from compression.importance import random_importance, taylor_importance
from compression.measure import flops_per_token, parameter_counts, time_alternating
from compression.prune import heads_to_keep, prune_model
from compression.pruning_pipeline import PruneOptions, prune_checkpoint
from compression.scratch import write_scratch_init
from core.data_dir import REPO_ROOT, resolve_data_dir
from core.runs import final_checkpoint, train_or_resume
from core.sweep import Sweep, load_sweep, run_overrides
from core.tasks import EvalOptions, get_task, load_task_module
from core.training import file_sha256, git_commit

GATE_SWEEP = "configs/nmt/gates_l0_sweep.yaml"
log = logging.getLogger(__name__)

STAGES = ("curve_nmt", "gates", "scratch", "latency", "curve_ner", "significance")
TEACHER_SECTIONS = ("curve_nmt", "gates", "scratch", "latency", "significance")  # rows that describe one NMT teacher
TEACHER = REPO_ROOT / "benchmarks/work/nmt_multi30k/nmt_small/version_1/checkpoints/swa.ckpt"
RESULTS = REPO_ROOT / "benchmarks/results/head_pruning"
TEACHER_EPOCHS = 18
FINETUNE_KEYS = ("bleu_finetuned", "bleu_lost_finetuned", "finetune_epochs", "finetune_config", "finetuned_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--teacher", default=str(TEACHER), help="converged TranslationModule checkpoint")
    p.add_argument("--ner_ckpt", default=None, help="trained TaggerModule checkpoint (curve_ner)")
    p.add_argument("--data_dir", default=None, help="folder with multi30k/ and conll2003/ (default: ../shared/data)")
    p.add_argument("--work", default=str(REPO_ROOT / "benchmarks/work/head_pruning"))
    p.add_argument("--results", default=str(RESULTS / "head_pruning.json"))
    p.add_argument("--fractions", type=float, nargs="+", default=[i / 10 for i in range(10)])
    p.add_argument("--score_sentences", type=int, default=2000, help="training pairs/sentences for Taylor scores")
    p.add_argument("--random_seeds", type=int, default=3)
    p.add_argument("--curve_beam", type=int, default=1, help="beam for the BLEU curve (1 = greedy)")
    p.add_argument("--eval_sentences", type=int, default=None, help="first N test sentences only (smoke)")
    p.add_argument("--lambdas", nargs="+", default=["0.01", "0.05", "0.1"])
    p.add_argument("--gate_epochs", type=int, default=2)
    p.add_argument("--gate_seed", type=int, default=None,
                   help="seed of the gate runs (default: the config's); rows are then named L_seedN, a replicate")
    p.add_argument("--gate_threshold", type=float, default=0.5)
    p.add_argument("--gate_finetune_epochs", type=int, default=0,
                   help="recovery fine-tuning epochs of each gate-pruned model (--finetune_config)")
    p.add_argument("--finetune_config", default="configs/nmt/finetune_pruned_swa.yaml",
                   help="recipe of the recovery fine-tuning (a delta over configs/nmt/small.yaml); rows fine-tuned "
                        "with another recipe or epoch count are redone")
    p.add_argument("--scratch_epochs", type=int, default=6)
    p.add_argument("--scratch_lambdas", nargs="+", default=None, help="gate rows to retrain (default: all)")
    p.add_argument("--taylor_levels", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--latency_batches", type=int, default=40, help="real test batches timed per batch size")
    p.add_argument("--latency_rounds", type=int, default=3)
    p.add_argument("--train_args", default="", help="extra train.py arguments for gate/scratch runs")
    p.add_argument("--smoke", action="store_true", help="tiny slices of every stage, to check the script")
    args = p.parse_args(argv)
    if args.smoke:
        args.fractions, args.score_sentences, args.random_seeds, args.eval_sentences = [0.0, 0.5], 32, 1, 40
        args.lambdas, args.gate_epochs, args.scratch_epochs, args.taylor_levels = ["0.05"], 1, 1, [0.5]
        args.gate_finetune_epochs = min(args.gate_finetune_epochs, 1)
        args.latency_batches, args.latency_rounds = 2, 1
        args.train_args += " --trainer.limit_train_batches 3 --trainer.limit_val_batches 1"
        args.work, args.results = args.work + "_smoke", str(Path(args.work + "_smoke") / "head_pruning.json")
    return args


class Bench:
    """Paths, data files and the results file of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work, self.results = args, Path(args.work), Path(args.results)
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = resolve_data_dir(args.data_dir, "multi30k").parent
        m30k = self.data / "multi30k"
        self.train_src, self.train_ref = m30k / "train.en", m30k / "train.de"
        self.test_src = self._head(m30k / "test_2016_flickr.en")
        self.test_ref = self._head(m30k / "test_2016_flickr.de")
        self.state = json.loads(self.results.read_text()) if self.results.is_file() else {}
        self.state["meta"] = {"git_commit": git_commit(), "teacher": args.teacher, "teacher_epochs": TEACHER_EPOCHS,
                              "teacher_sha256": self._teacher_fingerprint(), "smoke": args.smoke,
                              "torch_threads": torch.get_num_threads()}

    def _teacher_fingerprint(self) -> str | None:
        """SHA-256 of the teacher file. Stored NMT rows measured on another teacher (a retrained one at the same
        path) are dropped, so one results file never mixes teachers; the tagger curve does not depend on it."""
        previous = self.state.get("meta", {}).get("teacher_sha256")
        if not Path(self.args.teacher).is_file():
            return previous
        sha = file_sha256(self.args.teacher)
        stale = [s for s in TEACHER_SECTIONS if s in self.state]
        if sha != previous and stale:
            log.info(f"[meta] {self.args.teacher} is not the teacher of the stored {', '.join(stale)} rows "
                  f"(sha256 {sha[:12]} vs {str(previous)[:12]}): those sections start afresh")
            for section in stale:
                del self.state[section]
        return sha

    def _head(self, path: Path) -> Path:
        """The file itself, or (with --eval_sentences) a copy of its first lines in the work folder."""
        n = self.args.eval_sentences
        if n is None:
            return path
        out = self.work / f"{path.name}.first{n}"
        out.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
        return out

    def save(self, stage: str, section: dict) -> None:
        """Store a stage's section, write JSON and markdown (called after every row)."""
        self.state[stage] = section
        self.results.parent.mkdir(parents=True, exist_ok=True)
        self.results.write_text(json.dumps(self.state, indent=2, default=str))
        self.results.with_suffix(".md").write_text(markdown(self.state))
        log.info(f"[{stage}] saved {self.results}")

    def png(self, name: str) -> Path:
        """Path of a plot in the results folder."""
        return (self.work if self.args.smoke else self.results.parent) / name

    def train(self, name: str, configs: list[str], init_from: Path, epochs: int, extra: tuple[str, ...] = ()) -> Path:
        """`core.runs.train_or_resume` of `configs` from `init_from` in this study's work folder."""
        return train_or_resume(name, configs, self.work, epochs, ["--model.init_args.init_from", str(init_from),
                                                                  "--data.dir", str(self.data), *extra,
                                                                  *shlex.split(self.args.train_args)])


def heads_kept(network: torch.nn.Module) -> dict[str, int]:
    """Heads left per attention type (short names), summed over layers."""
    from compression.heads import attention_modules
    return {SHORT[k]: sum(a.num_heads for a in attns) for k, attns in attention_modules(network).items()}


def nmt_bleu(module, bench: Bench, beam: int) -> float:
    """test2016 sacreBLEU of a translation module at beam `beam`."""
    from nmt.translate import evaluate_file
    with torch.no_grad():
        return float(evaluate_file(module, bench.test_src, bench.test_ref, beam)["bleu"])


def ner_f1(module, conll: Path) -> float:
    """Word-level entity F1 of a tagger on a CoNLL file."""
    return get_task("ner").quality(module, [conll], EvalOptions())["f1"]


def curve(module, scores_fn, evaluate, fractions: list[float], seeds: int) -> list[dict]:
    """Quality after one-shot pruning of each fraction of all heads, Taylor vs random (mean of seeds)."""
    rows = []
    taylor = scores_fn()
    network = module.compressible_network()
    for frac in fractions:
        row: dict = {"fraction": frac}
        for name, scores in [("taylor", taylor)] + [(f"random_{s}", random_importance(network, seed=s))
                                                     for s in range(seeds)]:
            pruned = copy.deepcopy(module)
            prune_model(pruned.compressible_network(), heads_to_keep(scores, frac))
            row[name] = evaluate(pruned.eval())
            row.setdefault("heads_kept", heads_kept(pruned.compressible_network()))
        row["random_mean"] = statistics.mean(row[f"random_{s}"] for s in range(seeds))
        log.info(f"[curve] {frac:.0%} pruned: taylor {row['taylor']:.4g}, random {row['random_mean']:.4g}")
        rows.append(row)
        yield rows


def stage_curve_nmt(bench: Bench) -> None:
    """One-shot Taylor vs random head pruning of the NMT teacher: test2016 BLEU at each fraction removed."""
    a = bench.args
    _, teacher = load_task_module(a.teacher, "nmt")
    batches = get_task("nmt").scoring_batches(teacher, [bench.train_src, bench.train_ref], a.score_sentences, 32)
    section = {"metric": f"test2016 BLEU, beam {a.curve_beam}", "score_sentences": a.score_sentences,
               "random_seeds": a.random_seeds, "rows": []}
    for rows in curve(teacher, lambda: taylor_importance(teacher, batches, get_task("nmt").loss),
                      lambda m: nmt_bleu(m, bench, a.curve_beam), a.fractions, a.random_seeds):
        section["rows"] = rows
        section["plot"] = str(plot_curve(rows, "BLEU (test2016)", "Multi30k en-de: heads pruned vs BLEU",
                                         bench.png("head_pruning_curve_nmt.png")))
        bench.save("curve_nmt", section)


def size_row(report: dict) -> dict:
    """Params, FLOPs per token and latency of the pruned model of a `prune_checkpoint` report."""
    after = report["size"]["after"]
    return {"params": after["params"]["total"], "flops": after["flops_per_token"],
            "latency_ms": after["latency_ms"]}


def stage_gates(bench: Bench) -> None:
    """Fine-tune L0 gates from the teacher per lambda, prune the closed heads, record BLEU and size per row."""
    a = bench.args
    _, teacher = load_task_module(a.teacher, "nmt")
    section = bench.state.get("gates", {})
    if "teacher_bleu" not in section:
        section["teacher_bleu"] = nmt_bleu(teacher, bench, 5)
    section.update(epochs=a.gate_epochs, gate_threshold=a.gate_threshold, rows=section.get("rows", []))
    section["teacher_heads"] = heads_kept(teacher.compressible_network())
    done = {r["lambda"] for r in section["rows"]}
    seed = () if a.gate_seed is None else ("--seed_everything", str(a.gate_seed))
    sweep = load_sweep(GATE_SWEEP)
    for run_name, lam in zip(a.lambdas, gate_row_names(a), strict=True):
        if lam in done:
            continue
        run = bench.train(f"gates_l0_{lam}", list(sweep.configs), Path(a.teacher), a.gate_epochs,
                          (*seed, *run_overrides(sweep, run_name)))
        out = bench.work / f"gates_l0_{lam}_pruned.ckpt"
        report = prune_checkpoint(PruneOptions(
            checkpoint=str(run / "checkpoints/last.ckpt"), output=str(out), method="gates",
            gate_threshold=a.gate_threshold, eval_data=[str(bench.test_src), str(bench.test_ref)],
            beam_size=5, batch_sizes=a.batch_sizes, report=str(bench.work / f"gates_l0_{lam}_report")))
        kept = {SHORT[k]: sum(v) for k, v in report["heads"]["after"].items()}
        bleu = report["quality"]["after"]["bleu"]
        gates = sweep_gates(sweep, run_name)
        section["rows"].append({"lambda": lam, "config": f"{GATE_SWEEP} --run {run_name}", "seed": a.gate_seed,
                                "l0_lambda": gates["l0_lambda"], "kd": "model.init_args.kd" in sweep.runs[run_name],
                                "gate_types": [SHORT[t] for t in gates["types"]], "gate_epochs": a.gate_epochs,
                                "heads_kept": kept, "heads_per_layer": report["heads"]["after"],
                                "bleu": bleu, "bleu_gated": report["quality"]["before"]["bleu"],
                                "bleu_lost": section["teacher_bleu"] - bleu, "checkpoint": str(out),
                                **size_row(report)})
        gifs = sorted(run.glob("*.gif"))
        if gifs and (lam == "0.05" or "heatmap" not in section):
            section["heatmap"] = str(heatmap_from_gif(gifs[0], bench.png("head_gates_heatmap.png")))
        bench.save("gates", section)
    if a.gate_finetune_epochs:
        finetune_gate_rows(bench, section)


def sweep_gates(sweep: Sweep, run: str) -> dict:
    """The gates of a sweep run: its override, else those of the sweep's last config."""
    if "model.init_args.gates" in sweep.runs[run]:
        return sweep.runs[run]["model.init_args.gates"]
    return yaml.safe_load((REPO_ROOT / sweep.configs[-1]).read_text())["model"]["init_args"]["gates"]


def gate_row_names(args: argparse.Namespace) -> list[str]:
    """Row (and run) name of each `--lambdas` entry: the config's suffix, `_seedN` added for a seed replicate."""
    return [lam if args.gate_seed is None else f"{lam}_seed{args.gate_seed}" for lam in args.lambdas]


def finetune_gate_rows(bench: Bench, section: dict) -> None:
    """Recovery fine-tuning (`--finetune_config`) of each `--lambdas` gate-pruned model that lost heads and has no
    fine-tuned BLEU for this recipe yet; adds `bleu_finetuned` / `bleu_lost_finetuned` to its row (a result of an
    earlier recipe is kept in `earlier_finetunes`)."""
    from nmt.translate import load_translator
    epochs, config = bench.args.gate_finetune_epochs, bench.args.finetune_config
    names = gate_row_names(bench.args)
    for row in section["rows"]:
        done = row.get("finetune_config", "configs/nmt/finetune_pruned.yaml"), row.get("finetune_epochs")
        if row["lambda"] not in names or row["heads_kept"] == section["teacher_heads"] \
                or ("bleu_finetuned" in row and done == (config, epochs)):
            continue
        run = bench.train(f"gates_l0_{row['lambda']}_pruned_{Path(config).stem}{epochs}",
                          ["configs/nmt/small.yaml", config], Path(row["checkpoint"]), epochs)
        ckpt = final_checkpoint(run)
        bleu = nmt_bleu(load_translator(ckpt), bench, 5)
        if "bleu_finetuned" in row:  # the previous recipe's result moves to the row's history
            row.setdefault("earlier_finetunes", []).append({k: row[k] for k in FINETUNE_KEYS if k in row})
        row.update(bleu_finetuned=bleu, bleu_lost_finetuned=section["teacher_bleu"] - bleu, finetune_epochs=epochs,
                   finetune_config=config, finetuned_checkpoint=str(ckpt))
        log.info(f"[gates] lambda {row['lambda']}: fine-tuned {epochs} epoch(s) with {config} -> BLEU {bleu:.2f}")
        bench.save("gates", section)


def stage_scratch(bench: Bench) -> None:
    """Train the head layout of each gate row from scratch for the same budget (Voita et al.'s baseline)."""
    a = bench.args
    rows = bench.state.get("gates", {}).get("rows", [])
    if not rows:
        raise SystemExit("scratch: run the gates stage first (it defines the head configurations)")
    previous = bench.state.get("scratch", {})
    todo = [r for r in rows if a.scratch_lambdas is None or r["lambda"] in a.scratch_lambdas]
    # rows of other lambdas trained for the same budget stay (one invocation per layout is ~1 h)
    kept = [r for r in previous.get("rows", []) if previous.get("epochs") == a.scratch_epochs
            and r["lambda"] not in {t["lambda"] for t in todo}]
    section = {"epochs": a.scratch_epochs, "teacher_epochs": TEACHER_EPOCHS,
               "budget": f"{a.scratch_epochs} epochs from scratch vs the teacher's {TEACHER_EPOCHS} "
                         f"(+{a.gate_epochs} gate epochs for the pruned models)", "rows": kept}
    from nmt.translate import load_translator
    for row in todo:
        name = f"scratch_l0_{row['lambda']}_e{a.scratch_epochs}"
        init = bench.work / f"{name}_init.ckpt"
        heads = write_scratch_init(row["checkpoint"], init)
        run = bench.train(name, ["configs/nmt/small.yaml"], init, a.scratch_epochs)
        ckpt = final_checkpoint(run)
        section["rows"].append({"lambda": row["lambda"], "heads_per_layer": heads,
                                "heads_kept": {SHORT[k]: sum(v) for k, v in heads.items()},
                                "bleu": nmt_bleu(load_translator(ckpt), bench, 5), "pruned_bleu": row["bleu"],
                                "checkpoint": str(ckpt)})
        bench.save("scratch", section)


def time_models(models: dict[str, torch.nn.Module], batches: list[dict], rounds: int) -> dict[str, list[float]]:
    """Seconds per batch for each model (median over rounds), the models side by side on each batch
    (`compression.measure.time_alternating`, one warm-up round for shapes new to the allocator)."""
    out: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for batch in batches:
            calls = {name: partial(model, batch["src"], batch["tgt_in"]) for name, model in models.items()}
            for name, seconds in time_alternating(calls, rounds, warmup=1).items():
                out[name].append(statistics.median(seconds))
    return out


def stage_latency(bench: Bench) -> None:
    """Teacher-forced forward latency of every pruned model against the teacher, side by side, with FLOPs."""
    a = bench.args
    _, teacher = load_task_module(a.teacher, "nmt")
    models = {"teacher": teacher}
    score_batches = get_task("nmt").scoring_batches(teacher, [bench.train_src, bench.train_ref], a.score_sentences, 32)
    scores = taylor_importance(teacher, score_batches, get_task("nmt").loss)
    for level in a.taylor_levels:
        pruned = copy.deepcopy(teacher)
        prune_model(pruned.compressible_network(), heads_to_keep(scores, level))
        models[f"taylor_{level:.0%}"] = pruned
    for row in bench.state.get("gates", {}).get("rows", []):
        models[f"gates_l0_{row['lambda']}"] = load_task_module(row["checkpoint"], "nmt")[1]
    nets = {name: m.model.eval() for name, m in models.items()}
    section = {"measure": "teacher-forced forward (encoder + decoder + output projection) over real test2016 "
                          "batches in file order; per model the median over rounds per batch; speed-up = median "
                          "over batches of teacher time / model time; FLOPs of the same forward",
               "rounds": a.latency_rounds, "batches_per_size": a.latency_batches, "rows": []}
    per_size = {}
    for bs in a.batch_sizes:
        batches = get_task("nmt").scoring_batches(teacher, [bench.test_src, bench.test_ref], bs * a.latency_batches, bs)
        per_size[bs] = (batches, time_models(nets, batches, a.latency_rounds))
        log.info(f"[latency] batch {bs}: {len(batches)} batches timed")
    flops_batch = per_size[a.batch_sizes[0]][0][0]
    count = lambda inputs: int(inputs[1].numel())  # noqa: E731  target tokens of (src, tgt_in)
    base_flops = flops_per_token(nets["teacher"], (flops_batch["src"], flops_batch["tgt_in"]), count)
    for name, net in nets.items():
        flops = flops_per_token(net, (flops_batch["src"], flops_batch["tgt_in"]), count)
        row = {"model": name, "heads_kept": heads_kept(net), "params": parameter_counts(net)["total"],
               "flops": flops, "flop_reduction": base_flops / flops, "latency_ms": {}, "speedup": {}, "ratio": {}}
        for bs, (_, times) in per_size.items():
            row["latency_ms"][bs] = 1000 * statistics.median(times[name])
            row["speedup"][bs] = statistics.median(t / m for t, m in zip(times["teacher"], times[name], strict=True))
            row["ratio"][bs] = row["speedup"][bs] / row["flop_reduction"]
        section["rows"].append(row)
        log.info(f"[latency] {name}: FLOPs /{row['flop_reduction']:.2f}, speed-up {row['speedup']}")
    bench.save("latency", section)


def stage_curve_ner(bench: Bench) -> None:
    """One-shot Taylor vs random head pruning of the tagger: test F1 at each fraction of heads removed."""
    a = bench.args
    if not a.ner_ckpt:
        raise SystemExit("curve_ner needs --ner_ckpt (a trained TaggerModule checkpoint)")
    conll = resolve_data_dir(a.data_dir, "conll2003")
    _, tagger = load_task_module(a.ner_ckpt, "ner")
    test = conll / "eng.testb"
    if a.eval_sentences:
        blocks = test.read_text().split("\n\n")[: a.eval_sentences + 1]
        test = bench.work / "eng.testb.head"
        test.write_text("\n\n".join(blocks) + "\n")
    batches = get_task("ner").scoring_batches(tagger, [conll / "eng.train"], a.score_sentences, 32)
    section = {"metric": "test F1 (eng.testb, seqeval)", "checkpoint": a.ner_ckpt,
               "score_sentences": a.score_sentences, "random_seeds": a.random_seeds, "rows": []}
    for rows in curve(tagger, lambda: taylor_importance(tagger, batches, get_task("ner").loss),
                      lambda m: ner_f1(m, test),
                      a.fractions, a.random_seeds):
        section["rows"] = rows
        section["plot"] = str(plot_curve(rows, "entity F1 (eng.testb)", "CoNLL-2003 tagger: heads pruned vs F1",
                                         bench.png("head_pruning_curve_ner.png")))
        bench.save("curve_ner", section)


def main(argv: list[str] | None = None) -> None:
    """Run the requested stages in order; each saves its section of the results as it goes."""
    args = parse_args(argv)
    bench = Bench(args)
    for stage in args.stages:
        start = time.time()
        log.info(f"=== {stage}")
        globals()[f"stage_{stage}"](bench)
        log.info(f"=== {stage}: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
