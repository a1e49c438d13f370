"""Fresh-process CPU latency of a prune-then-distil report's models (issue 6).

    python -m benchmarks.sts.latency --report benchmarks/results/sts/sts_prune_distill_ffn25.json \
        --student benchmarks/work/sts_prune_distill_ffn25/student.ckpt

The pipeline times its models at the end of a long training process; this script times the same
architectures in a new process: the teacher, the saved student checkpoint (its exact pruned shape)
and every `kept_layers` row rebuilt from the teacher (latency depends on shapes, not on weights).
Models alternate inside every repeat on the pipeline's real STS batches; medians. The qualities are
the report's, so the equal-speed comparison is recomputed with these speeds. Writes
`sts_latency__<report name>` beside the report (or `--output`). A students-only run
(`--baselines false`) takes its teacher and layer-dropping rows from `--baselines REPORT`, a
full report of the same recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from compression.measure import latency
from sts.data import read_sts
from sts.module import SentenceEncoderModule
from sts.timing import equal_speed_comparison, equal_speed_lines, sentence_batches

log = logging.getLogger(__name__)


def main() -> None:
    """Time the report's models in this process and write the JSON beside the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="a sts_prune_distill*.json written by the pipeline")
    ap.add_argument("--student", required=True, help="the pipeline's student.ckpt")
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--baselines", help="report whose layer-dropping rows to time (default: --report's own)")
    ap.add_argument("--output", help="JSON written (default: sts_latency__<report name> beside the report)")
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    baselines = json.loads(Path(args.baselines).read_text()) if args.baselines else report
    cfg = report["config"]
    teacher = SentenceEncoderModule(checkpoint_dir=cfg["teacher"], pooling=cfg["pooling"]).eval()
    models = {"teacher": teacher,
              "pruned + distilled": SentenceEncoderModule.load_from_checkpoint(args.student, weights_only=False,
                                                                               teacher=None).eval()}
    for row in baselines["rows"]:
        if "kept_layers" in row:
            models[row["name"]] = SentenceEncoderModule(checkpoint_dir=cfg["teacher"], pooling=cfg["pooling"],
                                                        keep_layers=row["kept_layers"]).eval()
    pairs = read_sts(next(iter(cfg["sts_files"].values())))
    sentences = [p.sentence1 for p in pairs]
    inputs = sentence_batches(teacher.tokenizer, sentences, cfg["latency_batch_sizes"], cfg["max_length"])
    timed = latency(models, inputs, args.repeats)
    dropped = {r["name"]: r for r in baselines["rows"] if "kept_layers" in r}
    quality = {**{r["name"]: r for r in report["rows"]}, **dropped}
    rows = []
    for name, per_batch in timed.ms.items():
        row = {"name": name, "latency_ms": {str(b): ms for b, ms in per_batch.items()},
               "speedup_b16": timed.speedup(name, "teacher", 16),
               "quality_vs_teacher": quality[name]["quality_vs_teacher"]}
        if "kept_layers" in quality[name]:
            row["kept_layers"] = quality[name]["kept_layers"]
        rows.append(row)
        log.info(f"{name}: " + " / ".join(f"b{b} {ms:.1f} ms" for b, ms in per_batch.items())
              + f"  speed-up b16 {row['speedup_b16']:.2f}x  quality {row['quality_vs_teacher']:.2f} %")
    out = {"report": args.report, "baselines": args.baselines, "student": args.student, "repeats": args.repeats,
           "torch_threads": timed.threads, "rows": rows,
           "equal_speed": [equal_speed_comparison(rows, b) for b in inputs],
           "command": shlex.join(["python", "-m", "benchmarks.sts.latency", *sys.argv[1:]])}
    log.info("\n".join(equal_speed_lines(rows, list(inputs))))
    output = Path(args.output) if args.output else Path(args.report).with_name("sts_latency__" + Path(args.report).name)
    output.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
