"""Collect single-student prune-then-distil runs (issue 6) into one comparison JSON.

    python -m benchmarks.sts.variants --baseline benchmarks/results/sts/sts_prune_distill_ffn30.json \
        --run "+ hidden-state alignment (hidden_weight 1)=benchmarks/work/screen_hw1" ... \
        --output benchmarks/results/sts/sts_distillation_variants.json

Each `--run NAME=DIR` is the output_dir of a `prune_distill.py ... --baselines false` run; its
`report.json` gives the "pruned + distilled" row, the teacher's Spearman and the git commit. The
command of each run is rebuilt from its recorded config (the overrides against the baseline's).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

from sts.pipeline import PipelineConfig

log = logging.getLogger(__name__)

STUDENT = "pruned + distilled"


def student_row(report: dict) -> dict:
    """The distilled student's row of a pipeline report, with its % of the teacher's en Spearman."""
    teacher = report["rows"][0]["spearman_en"]
    row = next(r for r in report["rows"] if r["name"] == STUDENT)
    return {"spearman_en": row["spearman_en"], "spearman_de": row.get("spearman_de"),
            "spearman_ru": row.get("spearman_ru"), "quality_vs_teacher": 100 * row["spearman_en"] / teacher,
            "heads_per_layer": row.get("heads_per_layer"), "ffn_per_layer": row.get("ffn_per_layer"),
            "git_commit": report["git_commit"]}


def overrides(config: dict, base: dict) -> str:
    """Command-line overrides turning `base` into `config`: keys whose values differ (a key `base` predates
    counts at its PipelineConfig default); layer-dropping lists are moot when baselines are off."""
    defaults = {f.name: f.default for f in fields(PipelineConfig)}
    moot = {"report_json"} | ({"drop_layers_keep"} if not config.get("baselines", True) else set())
    changed = {k: v for k, v in config.items() if k not in moot and base.get(k, defaults.get(k)) != v}
    return " ".join(f"--{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in changed.items())


def main() -> None:
    """Read the baseline report and every run's report.json; write the comparison JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="a full pipeline report (its student is the reference row)")
    ap.add_argument("--baseline_config", default="--sweep configs/sts/prune_distill_sweep.yaml --run ffn30",
                    help="prune_distill.py arguments of the baseline recipe")
    ap.add_argument("--run", action="append", default=[], help="NAME=OUTPUT_DIR of a student-only run")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    baseline = json.loads(Path(args.baseline).read_text())
    rows = [{"name": f"MSE + cosine ({args.baseline_config})", **student_row(baseline),
             "command": baseline.get("command")}]
    for spec in args.run:
        name, _, folder = spec.partition("=")
        report = json.loads((Path(folder) / "report.json").read_text())
        command = (f".venv/bin/python prune_distill.py {args.baseline_config} "
                   + overrides(report["config"], baseline["config"]))
        rows.append({"name": name, **student_row(report), "command": command})
        log.info(f"{name}: {rows[-1]['spearman_en']:.2f} ({rows[-1]['quality_vs_teacher']:.2f} %)")
    out = {"title": "Distillation variants of one pruned student (quality only)",
           "teacher_spearman_en": baseline["rows"][0]["spearman_en"], "rows": rows}
    Path(args.output).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
