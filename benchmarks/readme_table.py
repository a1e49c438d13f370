"""Print the README results table from the committed benchmark JSON files.

    python benchmarks/readme_table.py   # paste the output under "## Results" in README.md
"""

from __future__ import annotations

import json
from pathlib import Path

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
        ms = row["latency_ms"]
        rows.append(f"| {row['name']} | {row['spearman_en']:.2f} / {row['spearman_de']:.2f} / {row['spearman_ru']:.2f} "
                    f"| {row['quality_vs_teacher']:.2f} | {row['params'] / 1e6:.1f}M | {row['flops'] / 1e6:.2f} "
                    f"| {ms['1']:.1f} / {ms['16']:.1f} / {ms['64']:.1f} | {row['speedup_b16']:.2f}× |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `python benchmarks/sts_prune_distill.py` | | | | | |")
    return rows


def main() -> None:
    path = RESULTS / "nmt_multi30k.json"
    if path.exists():
        print("\n".join(nmt_rows(json.loads(path.read_text()))))
    path = RESULTS / "sts_prune_distill.json"
    if path.exists():
        print("\n" + "\n".join(sts_rows(json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
