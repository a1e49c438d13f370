"""Benchmark for issue 6: prune-then-distil all-MiniLM-L6-v2 on STS-B (en, de, ru dev).

    python -m benchmarks.sts.run                 # full run (~125 min on 2 cores)
    python -m benchmarks.sts.run --smoke         # < 1 min: data slices, checks the plumbing

Runs `sts.pipeline.run_pipeline` with `configs/sts/minilm_prune_distill.yaml` (rows: teacher;
pruned without distillation; pruned + distilled; same size from random init + distilled; 3 and 4
of 6 layers kept + distilled) and writes `benchmarks/results/sts/sts_prune_distill.json` (one row per model:
name, spearman_en/de/ru, params, flops per token, latency_ms per batch size 1/16/64 measured
side by side, speedup_b16 vs the teacher, quality_vs_teacher = % of the teacher's en Spearman)
and `benchmarks/results/sts/sts_prune_distill.md`, rewritten after every stage. `--smoke` writes to
benchmarks/work/ instead, so it never overwrites the committed result.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path

from prune_distill import parse
from sts.pipeline import run_pipeline, write_report

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/sts/minilm_prune_distill.yaml"
RESULT = REPO / "benchmarks/results/sts/sts_prune_distill.json"


def slice_files(cfg_files: dict[str, str] | list[str], folder: Path, lines: int) -> dict[str, str] | list[str]:
    """Copies of the first `lines` lines of each file (keys / order kept), for the smoke run."""
    def cut(path: str) -> str:
        out = folder / Path(path).name
        out.write_text("\n".join(Path(path).read_text(encoding="utf-8").splitlines()[:lines]) + "\n",
                       encoding="utf-8")
        return str(out)
    if isinstance(cfg_files, dict):
        return {k: cut(v) for k, v in cfg_files.items()}
    return [cut(p) for p in cfg_files]


def main() -> None:
    """Parse, run the pipeline, print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG), help="pipeline YAML (default: %(default)s)")
    ap.add_argument("--sweep", help="a sweep file (configs/sts/prune_distill_sweep.yaml): run --run of it instead")
    ap.add_argument("--run", help="the sweep run")
    ap.add_argument("--results", default=str(RESULT), help="JSON written (markdown beside it)")
    ap.add_argument("--smoke", action="store_true", help="tiny slices, 1 epoch, results under benchmarks/work/")
    ap.add_argument("overrides", nargs="*", help="pipeline overrides, e.g. --epochs 3 (after --)")
    args = ap.parse_args()
    recipe = ["--sweep", args.sweep, "--run", args.run] if args.sweep else ["--config", args.config]
    cfg = parse([*recipe, *args.overrides])
    cfg.report_json = args.results
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="sts_smoke_"))
        cfg.train_files = slice_files(cfg.train_files, tmp, 64)  # type: ignore[assignment]
        cfg.sts_files = slice_files(cfg.sts_files, tmp, 32)  # type: ignore[assignment]
        cfg.score_pairs, cfg.epochs, cfg.latency_repeats, cfg.batch_size = 16, 1, 3, 32
        cfg.output_dir = str(REPO / "benchmarks/work/sts_prune_distill_smoke")
        cfg.report_json = str(Path(cfg.output_dir) / "sts_prune_distill.json")
    report = run_pipeline(cfg)
    if not args.smoke:  # the command that reproduces the committed JSON, for the README table
        report["command"] = shlex.join(["python", "-m", "benchmarks.sts.run", *sys.argv[1:]])
        write_report(report, [Path(args.results)])
    log.info("%s", Path(cfg.output_dir, "report.md").read_text())
    log.info(f"total {sum(report['stages_seconds'].values()):.0f} s")


if __name__ == "__main__":
    main()
