"""Tables of the prune-then-distil sentence-encoder study (`benchmarks/results/sts/`)."""

from __future__ import annotations

import json
from pathlib import Path

from sts.timing import equal_speed_lines


def sts_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/sts/sts_prune_distill.json (issue 6), one per model."""
    rows = ["| STS-B dev, all-MiniLM-L6-v2 prune-then-distil | Spearman en / de / ru | % of teacher (en) | params "
            "| MFLOPs/token | ms batch 1 / 16 / 64 | speed-up (b16) |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "latency_ms" not in row:  # a run still in progress: sizes and latency come at its end
            rows.append(f"| {row['name']} | {row['spearman_en']:.2f} / {row['spearman_de']:.2f} / "
                        f"{row['spearman_ru']:.2f} | – | – | – | – | – |")
            continue
        ms = row["latency_ms"]
        rows.append(f"| {row['name']} | {row['spearman_en']:.2f} / {row['spearman_de']:.2f} / {row['spearman_ru']:.2f} "
                    f"| {row['quality_vs_teacher']:.2f} | {row['params'] / 1e6:.1f}M | {row['flops'] / 1e6:.2f} "
                    f"| {ms['1']:.1f} / {ms['16']:.1f} / {ms['64']:.1f} | {row['speedup_b16']:.2f}× |")
    command = r.get("command", "python -m benchmarks.sts.run")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `{command}` | | | | | |")
    return rows + _equal_speed(r["rows"])


def sts_latency_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/sts/sts_latency__*.json (issue 6): the report's models timed in a fresh process."""
    rows = [f"| fresh-process latency, {r['repeats']} repeats (student of {Path(r['student']).parent.name}) "
            "| ms batch 1 / 16 / 64 "
            "| speed-up (b16) | % of teacher (en) |", "|---|---|---|---|"]
    for row in r["rows"]:
        ms = row["latency_ms"]
        rows.append(f"| {row['name']} | {ms['1']:.1f} / {ms['16']:.1f} / {ms['64']:.1f} | {row['speedup_b16']:.2f}× "
                    f"| {row['quality_vs_teacher']:.2f} |")
    rows.append(f"| measured with | `{r['command']}` | | |")
    return rows + _equal_speed(r["rows"])


def _equal_speed(rows: list[dict]) -> list[str]:
    """The pruned model vs layer dropping at its speed, per batch size, recomputed from the rows' latencies."""
    sizes = [int(b) for b in next((r["latency_ms"] for r in rows if "latency_ms" in r), {})]
    lines = equal_speed_lines(rows, sizes)
    return ["", *(f"{line}  " for line in lines)] if lines else []


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    run = json.loads((results / "sts_prune_distill.json").read_text())
    fresh = json.loads((results / "sts_latency__sts_prune_distill.json").read_text())
    return "\n".join([*sts_rows(run), "", *sts_latency_rows(fresh)]) + "\n"
