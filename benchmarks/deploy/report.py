"""Tables of the deployment study (`benchmarks/results/deploy/deploy.json`): int8 / bf16 / ONNX Runtime per model."""

from __future__ import annotations

import json
from pathlib import Path


def _ms(row: dict) -> str:
    ms = row["latency_ms"]
    return " / ".join(f"{ms[b]:.1f}" for b in ("1", "16", "64"))


def _diff(row: dict) -> str:
    return "–" if row.get("max_abs_diff_vs_fp32") is None else f"{row['max_abs_diff_vs_fp32']:.1e}"


def sts_rows(r: dict) -> list[str]:
    """One row per sentence-encoder deployment."""
    rows = ["| STS-B dev (max length 256) | Spearman en / de / ru | % of fp32 teacher (en) | ms batch 1 / 16 / 64 "
            "| speed vs fp32 teacher (b16) | max abs diff vs its fp32 |", "|---|---|---|---|---|---|"]
    rows += [f"| {x['name']} | {x['spearman_en']:.2f} / {x['spearman_de']:.2f} / {x['spearman_ru']:.2f} "
             f"| {x['quality_vs_teacher']:.2f} | {_ms(x)} | {x['speedup_b16_vs_teacher']:.2f}× | {_diff(x)} |"
             for x in r["rows"]]
    return rows + [f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}`, {r['threads']} threads | | | | |"]


def ner_rows(r: dict) -> list[str]:
    """One row per tagger deployment."""
    rows = ["| CoNLL-2003 test, constrained Viterbi | F1 | change vs tagger fp32 / vs own fp32 (points) "
            "| tagging sents/s (b32) | speed-up vs tagger fp32 | forward ms batch 1 / 16 / 64 "
            "| max abs diff vs own fp32 |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {x['name']} | {x['f1']:.4f} | {x['f1_change_points']:+.2f} / {x.get('f1_change_vs_own_fp32', 0):+.2f} "
             f"| {x['tag_sents_per_s_b32']:.0f} | {x['tag_speedup_b32']:.2f}× | {_ms(x)} | {_diff(x)} |"
             for x in r["rows"]]
    rows += [f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}`, {r['threads']} threads | | | | | |"]
    return rows + sensitivity_rows(r, "eng.testa", "dev F1", "tagger")


def sensitivity_rows(r: dict, dev: str, metric: str, model: str) -> list[str]:
    """The stage's sensitivity scans on its dev set (per type, then per layer of the worst type), if it ran them."""
    scans = r.get("sensitivity_scan_dev")
    if not scans:
        return []
    if isinstance(scans, list):  # a result from before the per-layer scan
        scans = {"types": scans}
    rows = ["", f"Sensitivity scan on dev ({dev}): one linear type int8 at a time, then one layer at a time of the "
            f"type costing the most; `{model} int8-sensitive` keeps `{r['int8_sensitive_keeps_fp32']}` in fp32."]
    for level, scan in scans.items():
        rows += ["", f"| int8 linear {level[:-1]} | layers | {metric} | change |", "|---|---|---|---|",
                 *[f"| {x['type']} | {x['layers']} | {x['quality']:.2f} | {x['change']:+.2f} |" for x in scan]]
    return rows


def nmt_rows(r: dict) -> list[str]:
    """One row per translation deployment."""
    rows = ["| Multi30k test2016, beam 5 | BLEU | change | decoding sents/s | speed-up | same hypotheses as fp32 "
            "| translate ms batch 1 / 16 / 64 | max abs diff vs fp32 (first step) |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {x['name']} | {x['bleu']:.2f} | {x['bleu_change']:+.2f} | {x['decode_sents_per_s_beam5']:.1f} "
             f"| {x['decode_speedup']:.2f}× | {x['same_hypotheses_as_fp32']} of {x['sentences']} | {_ms(x)} "
             f"| {_diff(x)} |" for x in r["rows"]]
    return rows + [f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}`, {r['threads']} threads "
                   "| | | | | | |"] + sensitivity_rows(r, "Multi30k val, greedy", "val BLEU", "teacher")


def render_result(results: dict) -> str:
    """Markdown of deploy.json: a table per model kind measured."""
    parts = []
    for stage, rows in (("sts", sts_rows), ("ner", ner_rows), ("nmt", nmt_rows)):
        if stage in results:
            parts.append("\n".join(rows(results[stage])) + f"\n\nTarget: {results[stage]['targets']}.\n")
    return "\n".join(parts)


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    path = results / "deploy.json"
    return render_result(json.loads(path.read_text())) if path.is_file() else "(not measured yet)\n"
