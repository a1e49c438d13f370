"""Prune attention heads of any task's checkpoint (translation, tagger, sentence encoder); write the pruned
checkpoint and a report.

    # Taylor importance on 500 training pairs, remove 75 % of encoder heads and 2 cross heads:
    python prune_heads.py --ckpt RUN/checkpoints/last.ckpt --method taylor \\
        --prune encoder_self=0.75,decoder_cross=2 --score_data train.en train.de \\
        --eval_data test_2016_flickr.en test_2016_flickr.de --output pruned.ckpt

    # Gate fine-tuned checkpoint: keep heads whose eval-time gate is > 0.5 (gates removed):
    python prune_heads.py --ckpt GATED.ckpt --method gates --gate_threshold 0.5 --output pruned.ckpt

    # NER tagger, 30 % of all heads at random (baseline), F1 on the dev set:
    python prune_heads.py --ckpt ner.ckpt --method random --prune 0.3 --eval_data valid.txt --output p.ckpt

    # Sentence encoder, half of its heads by Taylor importance on STS pairs, Spearman on STS-B dev:
    python prune_heads.py --ckpt sts.ckpt --method taylor --prune 0.5 --score_data sts-train.csv \\
        --eval_data sts-dev.csv --output p.ckpt

`--score_data` / `--eval_data` are the task's files: source and reference text (nmt), a CoNLL file
(ner), an STS CSV (sts). The task is the one the checkpoint records; `--task` names it for
checkpoints written before tasks were recorded.

Targets: `--prune N` (heads), `--prune 0.4` (fraction) over all attention types ranked
together, or per type `TYPE=AMOUNT,...` (types: encoder_self, decoder_self, decoder_cross,
bert_self). Writes `<output>` (reloads alone with `core.tasks.load_task_module(path)` or the
module's `load_from_checkpoint(path, weights_only=False)`) and `<report>.json` / `<report>.md`
(default: the output path without its suffix).

Optional fine-tuning: `--finetune_epochs N --finetune_config configs/nmt/small.yaml` trains the
pruned checkpoint for N epochs with that config (`train.py`, `init_from` the pruned file;
`--finetune_args "..."` adds train.py flags, e.g. `--data.dir`) in `<output stem>_finetune/` beside the
output (a re-run resumes or skips it) and adds the fine-tuned quality to the report (`quality.finetuned`,
`finetuned_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from compression.pruning_pipeline import METHODS, PruneOptions, measure_quality, prune_checkpoint
from core.runs import final_checkpoint, train_or_resume
from core.tasks import load_task_module


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (one flag per `PruneOptions` field)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, dest="checkpoint", help="checkpoint of any registered task")
    p.add_argument("--output", required=True, help="pruned checkpoint to write")
    p.add_argument("--method", required=True, choices=METHODS)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--prune", help="N heads, a fraction, or TYPE=AMOUNT,... per attention type")
    target.add_argument("--gate_threshold", type=float, help="gates: keep heads whose eval-time gate is > T")
    p.add_argument("--task", help="task of a checkpoint that records none (older files), e.g. nmt")
    p.add_argument("--score_data", nargs="+", default=[], help="taylor scoring: the task's files "
                   "(nmt: source reference; ner: CoNLL file; sts: STS CSV)")
    p.add_argument("--score_sentences", type=int, default=500, help="first N examples used for scoring")
    p.add_argument("--score_batch_size", type=int, default=32)
    p.add_argument("--eval_data", nargs="+", default=[], help="quality before/after: the task's files "
                   "(nmt: source reference -> BLEU/chrF; ner: CoNLL -> F1; sts: STS CSV -> Spearman)")
    p.add_argument("--beam_size", type=int, default=5, help="NMT quality: beam size")
    p.add_argument("--batch_sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64],
                   help="latency batch sizes, comma separated")
    p.add_argument("--seq_len", type=int, default=24, help="tokens per sequence for FLOPs / latency")
    p.add_argument("--latency_repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="random method / example inputs")
    p.add_argument("--report", help="report path without suffix (default: output without suffix)")
    p.add_argument("--finetune_epochs", type=int, default=0, help="fine-tune the pruned model for N epochs")
    p.add_argument("--finetune_config", help="training config for fine-tuning (e.g. configs/nmt/small.yaml)")
    p.add_argument("--finetune_args", default="", help="extra train.py arguments for fine-tuning")
    return p


def check_finetune(epochs: int, config: str | None) -> None:
    """Fine-tuning needs an existing training config; checked before the (slow) pruning."""
    if epochs < 0 or epochs and not (config and Path(config).is_file()):
        raise ValueError(f"--finetune_epochs {epochs} needs >= 0 epochs and --finetune_config, an existing "
                         f"training config (got {config!r})")


def finetune(report: dict, opts: PruneOptions, epochs: int, config: str | None, extra: str) -> dict:
    """Train the pruned checkpoint `epochs` epochs with `config`; add the fine-tuned quality to the report."""
    check_finetune(epochs, config)
    output = Path(opts.output)
    # `<output stem>_finetune/version_0` beside the pruned file; a re-run resumes or skips it (`core.runs`)
    run = train_or_resume(f"{output.stem}_finetune", [config], output.parent, epochs,
                          ["--model.init_args.init_from", str(output), *shlex.split(extra)])
    tuned = final_checkpoint(run)
    report["finetuned_checkpoint"], report["finetune_epochs"] = str(tuned), epochs
    report["quality"]["finetuned"] = measure_quality(*load_task_module(tuned, opts.task), opts)
    stem = Path(opts.report) if opts.report else Path(opts.output).with_suffix("")
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    with open(f"{stem}.md", "a") as md:
        md.write(f"\nFine-tuned {epochs} epoch(s) with `{config}` -> `{tuned}`: {report['quality']['finetuned']}\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv`, run the pipeline, print a short summary; bad input exits with one error line."""
    args = vars(build_parser().parse_args(argv))
    tune = [args.pop(k) for k in ("finetune_epochs", "finetune_config", "finetune_args")]
    try:
        check_finetune(tune[0], tune[1])
        opts = PruneOptions(**args)
        report = prune_checkpoint(opts)
        if tune[0]:
            report = finetune(report, opts, *tune)
    except (ValueError, FileNotFoundError) as err:
        if argv is not None:  # called from Python (tests): let the caller see the exception
            raise
        sys.exit(f"prune_heads.py: error: {err}")
    print(json.dumps({"heads_after": report["heads"]["after"], "quality": report["quality"]}, indent=2,
                     default=str))
    return report


if __name__ == "__main__":
    main()
