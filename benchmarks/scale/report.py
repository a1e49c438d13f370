"""Tables of the scale-out study (`benchmarks/results/scale/scale.json`)."""

from __future__ import annotations

import json
from pathlib import Path


def validate_rows(r: dict) -> list[str]:
    """The validation setups side by side."""
    rows = ["| Multi30k val, greedy | cold validation s (median) | warm validation s (median) | BLEU | chrF | loss "
            "| sentences |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {x['setup']} | {x['cold_seconds']:.2f} | {x['warm_seconds']:.2f} | {x['bleu']:.2f} | {x['chrf']:.2f} "
             f"| {x['loss']:.4f} | {x['sentences']:.0f} |" for x in r["rows"]]
    rows += [f"| 2 processes vs 1 process, 1 thread | {r['cold_ratio_2_vs_1']:.2f}× "
             f"| **{r['warm_ratio_2_vs_1']:.2f}×** "
             f"| {'same scores in every setup' if r['same_scores_all_setups'] else 'SCORES DIFFER'} | | | |",
             f"| 2 processes vs 1 process, 2 threads | | {r['warm_ratio_2_processes_vs_2_threads']:.2f}× | | | | |",
             f"| 2 threads vs 1 (one process) | | {r['warm_ratio_2_threads_vs_1']:.2f}× | | | | |",
             f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}`, {r['repeats']} rounds | | | | | |"]
    return rows + ["", f"Target: {r['target']}."]


def data_rows(r: dict) -> list[str]:
    """Each data path from empty and from warm caches."""
    rows = [f"| {r['pairs'] / 1e6:.1f}M pairs | start | s to first batch | peak RSS MiB | PSS MiB after 200 batches "
            "| measured at |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        for start in ("first_start", "cached_start"):
            y = x[start]
            if "failed" in y:
                rows.append(f"| {x['source']} | {start.split('_')[0]} | failed (exit {y['failed']}) after "
                            f"{y['seconds']:.0f} s | | | |")
            else:
                rows.append(f"| {x['source']} | {start.split('_')[0]} | {y['first_batch_s']:.1f} "
                            f"| {y['peak_rss_mib']} | {y.get('pss_mib', '–')} | `{x['git_commit'][:10]}` |")
    rows.append(f"| command | `{r['command']}`; corpus: `{r['corpus']}` | | | | |")
    return rows + ["", f"Targets: {r['targets']}."]


def training_rows(r: dict, key: str, ratio_key: str, ratio_label: str) -> list[str]:
    """Training throughput of each variant (`key`: precision or data source) side by side."""
    rows = [f"| small config, training, by {key} | target tokens/s (median) | rounds | steps | train loss at the end |",
            "|---|---|---|---|---|"]
    rows += [f"| {x[key]} | {x['target_tokens_per_s']:.0f} | "
             f"{' / '.join(f'{v:.0f}' for v in x['all_tokens_per_s'])} | {x['steps']} | {x['train_loss']:.3f} |"
             for x in r["rows"]]
    rows += [f"| {ratio_label} | **{r[ratio_key]:.2f}×** | | | |",
             f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}` | | | |"]
    return rows + ["", f"Target: {r['target']}."]


def full_run_rows(results: dict) -> list[str]:
    """The full-length training runs: bf16 against fp32 at `make train` length, and the 2-hour recipe."""
    rows = ["| Multi30k test2016, beam 5 | training minutes | sacreBLEU | chrF | measured at |",
            "|---|---|---|---|---|"]
    if "bf16_full" in results:
        r = results["bf16_full"]
        rows += [f"| `make train`, fp32 (the shared teacher, re-scored) | {r['fp32']['minutes']} (its README) "
                 f"| {r['fp32']['test2016_bleu']:.2f} | {r['fp32']['test2016_chrf']:.2f} | `{r['git_commit'][:10]}` |",
                 *(f"| `make train` length, bf16-mixed, seed {b['seed']} | {b['minutes']:.0f} "
                   f"| {b['test2016_bleu']:.2f} | {b['test2016_chrf']:.2f} | `{b['git_commit'][:10]}` |"
                   for b in r["bf16_runs"]),
                 f"| bf16 (mean over seeds) − fp32 | | **{r['bleu_difference']:+.2f}** | | `{r['command']}`; "
                 f"target: {r['target']} |"]
    if "recipe" in results:
        r = results["recipe"]
        rows.append(f"| bf16 recipe `configs/nmt/bf16_2h.yaml` | {r['minutes']:.0f} (budget {r['budget_minutes']}) "
                    f"| **{r['test2016_bleu']:.2f}** | {r['test2016_chrf']:.2f} | `{r['git_commit'][:10]}`, "
                    f"`{r['command']}`; target: {r['target']} |")
    if "ensemble" in results:
        rows += ensemble_rows(results["ensemble"])
    return rows


def ensemble_rows(r: dict) -> list[str]:
    """The bf16 ensemble recipe: its members re-scored alone, then ensembles of the first k members."""
    rows = [f"| bf16 run seed {m['seed']} alone (`nmt.translate`) | {m['minutes']:.0f} | {m['test2016_bleu']:.2f} "
            f"| {m['test2016_chrf']:.2f} | `{r['git_commit'][:10]}` |" for m in r["members"]]
    for e in r["ensembles"]:
        recipe = r["recipe"] is not None and e["seeds"] == r["recipe"]["seeds"]
        bleu = f"**{e['test2016_bleu']:.2f}**" if recipe else f"{e['test2016_bleu']:.2f}"
        rows.append(f"| {'bf16 ensemble recipe' if recipe else 'bf16 ensemble'}, seeds "
                    f"{' + '.join(map(str, e['seeds']))} | {e['minutes']:.0f} (budget {r['budget_minutes']}) | {bleu} "
                    f"| {e['test2016_chrf']:.2f} | `{r['git_commit'][:10]}`, `{r['command']}`"
                    f"{'; target: ' + r['target'] if recipe else ''} |")
    return rows


def render_result(results: dict) -> str:
    """Markdown of scale.json: a table per stage measured."""
    parts = []
    if "validate" in results:
        parts.append("\n".join(validate_rows(results["validate"])) + "\n")
    if "bf16" in results:
        parts.append("\n".join(training_rows(results["bf16"], "precision", "speedup", "bf16-mixed vs fp32")) + "\n")
    if "throughput" in results:
        parts.append("\n".join(training_rows(results["throughput"], "source", "ratio_datasets_vs_text",
                                              "datasets vs text")) + "\n")
    if {"bf16_full", "recipe", "ensemble"} & set(results):
        parts.append("\n".join(full_run_rows(results)) + "\n")
    if "data" in results:
        parts.append("\n".join(data_rows(results["data"])) + "\n")
    return "\n".join(parts)


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    path = results / "scale.json"
    return render_result(json.loads(path.read_text())) if path.is_file() else "(not measured yet)\n"
