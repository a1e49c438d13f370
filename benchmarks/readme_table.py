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


def main() -> None:
    path = RESULTS / "nmt_multi30k.json"
    if path.exists():
        print("\n".join(nmt_rows(json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
