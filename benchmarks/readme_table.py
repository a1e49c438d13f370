"""Print the README results table from the committed benchmark JSON files.

    python benchmarks/readme_table.py   # paste the output under "## Results" in README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sts.timing import equal_speed_comparison, equal_speed_lines  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def nmt_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/nmt_multi30k.json."""
    t = r["throughput"]
    rows = [
        "| Multi30k en→de, small transformer (7.6M params) | value |",
        "|---|---|",
        f"| test2016 BLEU (beam 5 / greedy) | {r['test2016']['bleu']:.2f} / {r['test2016']['greedy']['bleu']:.2f} |",
        f"| test2016 chrF (beam 5) | {r['test2016']['chrf']:.2f} |",
        f"| val BLEU (beam 5 / greedy) | {r['val']['bleu']:.2f} / {r['val']['greedy']['bleu']:.2f} |",
        f"| training | {r['epochs_done']} epochs, {r['train_minutes']:.0f} min, "
        f"{r['train_tokens_per_s']:.0f} target tok/s (incl. validation) |",
        f"| training speed vs `torch.nn.Transformer` (same size, same batches) | "
        f"{t['ratio']:.2f}× ({t['ours_tokens_per_s']:.0f} vs {t['torch_tokens_per_s']:.0f} tok/s, median) |",
        f"| decoding, sentences/s (greedy / beam 5) | {r['decode_sents_per_s']['greedy']:.1f} / "
        f"{r['decode_sents_per_s']['beam5']:.1f} |",
        f"| sacreBLEU signature | `{r['sacrebleu_signature'].replace('|', chr(92) + '|')}` |",
        f"| measured at | `{r['git_commit'][:10]}`, `python benchmarks/nmt_multi30k.py --budget_minutes "
        f"{r['budget_minutes']:.0f} --epochs {r['planned_epochs']}` |",
    ]
    return rows


def sts_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/sts_prune_distill.json (issue 6), one per model."""
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
    command = r.get("command", "python benchmarks/sts_prune_distill.py")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `{command}` | | | | | |")
    return rows + _equal_speed(r["rows"])


def sts_summary_rows(paths: list[Path]) -> list[str]:
    """One row per issue-6 run (sts_prune_distill*.json, plus student-only runs timed by sts_latency.py):
    the pruned + distilled student's quality, FLOPs and batch-16 speed-up, and its margin over layer
    dropping at equal batch-16 speed, in the run and in the fresh-process timing."""
    rows = ["| run | student: % of teacher (en) | random init: % | MFLOPs/token | speed-up b16 in-run / fresh "
            "| vs layer dropping at equal speed b16, in-run / fresh (points) |", "|---|---|---|---|---|---|"]
    fresh = {p.stem.removeprefix("sts_latency__"): _load(p) for p in sorted(RESULTS.glob("sts_latency__*.json"))}
    runs = {path.stem: _load(path) for path in paths}
    for name in [*runs, *(stem for stem in fresh if stem not in runs)]:
        run, timed = runs.get(name), fresh.get(name)
        student = _row(run or timed, "pruned + distilled")
        if "quality_vs_teacher" not in student:  # a run still in progress
            continue
        random_init = next((r for r in (run or {}).get("rows", []) if r["name"].startswith("same size")), None)
        speeds = [f"{_row(r, 'pruned + distilled')['speedup_b16']:.2f}×"
                  if r and "speedup_b16" in _row(r, "pruned + distilled") else "–" for r in (run, timed)]
        margins = [_margin(r["rows"]) if r else "–" for r in (run, timed)]
        command = (run or timed).get("command", "python benchmarks/sts_prune_distill.py")
        random_text = f"{random_init['quality_vs_teacher']:.2f}" if random_init else "–"
        flops = f"{student['flops'] / 1e6:.2f}" if "flops" in student else "–"
        rows.append(f"| `{name}` (`{command}`) | {student['quality_vs_teacher']:.2f} | {random_text} | {flops} "
                    f"| {speeds[0]} / {speeds[1]} | {margins[0]} / {margins[1]} |")
    return rows


def _row(results: dict, name: str) -> dict:
    return next(r for r in results["rows"] if r["name"] == name)


def _margin(rows: list[dict]) -> str:
    """Points of the teacher's score by which the pruned student beats (+) or trails (−) layer dropping
    interpolated to its batch-16 speed; 'dominates' when faster and better than the fastest dropped row."""
    equal = equal_speed_comparison(rows, 16)
    if equal is None:
        return "–"
    if equal["dominates"]:
        return "dominates"
    if equal["layer_dropping_quality_at_equal_speed"] is None:
        return "outside range"
    return f"{equal['quality_vs_teacher'] - equal['layer_dropping_quality_at_equal_speed']:+.2f}"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def sts_variant_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/sts_distillation_variants.json (issue 6): distillation losses compared."""
    rows = ["| distillation of half heads + 30 % FFN, 2 epochs | Spearman en | % of teacher | command |",
            "|---|---|---|---|"]
    for row in r["rows"]:
        rows.append(f"| {row['name']} | {row['spearman_en']:.2f} | {row['quality_vs_teacher']:.2f} "
                    f"| `{row['command']}` (`{row['git_commit'][:10]}`) |")
    return rows


def sts_latency_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/sts_latency__*.json (issue 6): the report's models timed in a fresh process."""
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


def ner_compression_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/ner_compression.json (issue 4), one per compressed tagger."""
    decoding = "IOB2-constrained" if r["settings"].get("constrained") else "argmax"
    rows = [f"| CoNLL-2003 compression (teacher: MiniLM tagger; {decoding} decoding) | params | test F1 "
            "| Δ F1 (points) | dev F1 | tag speed-up b1 / b32 | epochs | git |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        speed = row["infer_sents_per_s"]
        rows.append(f"| {row['name']} | {row['params']['total'] / 1e6:.2f}M | {row['test_f1']:.4f} "
                    f"| {0.0 - 100 * row['f1_drop']:+.2f} | {row['dev_f1']:.4f} | {speed['batch_1']['speedup']:.2f}× / "
                    f"{speed['batch_32']['speedup']:.2f}× | {row['epochs']} | `{row['git_commit'][:7]}` |")
    return rows


def ner_soup_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/ner_soup*.json (issue 3): taggers and their soups, both decodings."""
    rows = ["| CoNLL-2003 tagger / soup | dev F1 argmax / constrained | test F1 argmax / constrained "
            "| test PER / LOC / ORG / MISC (constrained) |", "|---|---|---|---|"]
    for row in r["rows"]:
        decoded = {split: row.get(f"{split}_constrained", row[split]) for split in ("dev", "test")}
        types = " / ".join(f"{decoded['test']['per_type'][t]:.3f}" for t in ("PER", "LOC", "ORG", "MISC"))
        rows.append(f"| {row.get('checkpoint', row['name'])} | {row['dev']['f1']:.4f} / {decoded['dev']['f1']:.4f} "
                    f"| {row['test']['f1']:.4f} / {decoded['test']['f1']:.4f} | {types} |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}` | | |")
    return rows


def nmt_kd_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/nmt_kd.json (issue 4): teacher and half-depth students."""
    rows = ["| Multi30k half-depth student (enc/dec layers from the teacher) | params | test2016 BLEU (beam 5) "
            "| chrF | decoding speed-up | epochs |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        speed = row.get("decode_vs_teacher", {}).get("speedup")
        rows.append(f"| {row['name']} | {row['params']['total'] / 1e6:.2f}M | {row['test2016']['bleu']:.2f} "
                    f"| {row['test2016']['chrf']:.2f} | {f'{speed:.2f}×' if speed else '1.00×'} "
                    f"| {row.get('epochs', '-')} |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `python benchmarks/nmt_kd.py "
                f"--epochs {r['settings']['epochs']}` | | | | |")
    return rows


TABLES = (("nmt_multi30k.json", nmt_rows), ("ner_compression.json", ner_compression_rows),
          ("ner_soup_seeds.json", ner_soup_rows),
          ("nmt_kd.json", nmt_kd_rows), ("sts_prune_distill.json", sts_rows),
          ("sts_latency__sts_prune_distill.json", sts_latency_rows),
          ("sts_distillation_variants.json", sts_variant_rows))


def main() -> None:
    """Print every table whose JSON exists, then one summary row per issue-6 run (each run's full
    tables are in its own .md); head pruning has its own markdown (head_pruning.md)."""
    for pattern, rows in TABLES:
        for path in sorted(RESULTS.glob(pattern)):
            print("\n".join(rows(_load(path))) + "\n")
    print("\n".join(sts_summary_rows(sorted(RESULTS.glob("sts_prune_distill*.json")))))


if __name__ == "__main__":
    main()
