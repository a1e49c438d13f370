"""Tables of the factorisation / sharing / distillation study (`benchmarks/results/compression/`)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ner.report import ner_soup_rows


def ner_compression_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/compression/ner_compression.json (issue 4), one per compressed tagger."""
    decoding = "IOB2-constrained" if r["settings"].get("constrained") else "argmax"
    rows = [f"| CoNLL-2003 compression (teacher: MiniLM tagger; {decoding} decoding) | params | test F1 "
            "| Δ F1 (points) | dev F1 | tag speed-up b1 / b32 | epochs | git |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        speed = row["infer_sents_per_s"]
        rows.append(f"| {row['name']} | {row['params']['total'] / 1e6:.2f}M | {row['test_f1']:.4f} "
                    f"| {0.0 - 100 * row['f1_drop']:+.2f} | {row['dev_f1']:.4f} | {speed['batch_1']['speedup']:.2f}× / "
                    f"{speed['batch_32']['speedup']:.2f}× | {row['epochs']} | `{row['git_commit'][:7]}` |")
    return rows


def nmt_kd_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/compression/nmt_kd.json (issue 4): teacher and half-depth students."""
    rows = ["| Multi30k half-depth student (enc/dec layers from the teacher) | params | test2016 BLEU (beam 5) "
            "| chrF | decoding speed-up | epochs |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        speed = row.get("decode_vs_teacher", {}).get("speedup")
        rows.append(f"| {row['name']} | {row['params']['total'] / 1e6:.2f}M | {row['test2016']['bleu']:.2f} "
                    f"| {row['test2016']['chrf']:.2f} | {f'{speed:.2f}×' if speed else '1.00×'} "
                    f"| {row.get('epochs', '-')} |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `python -m benchmarks.compression.nmt_kd "
                f"--epochs {r['settings']['epochs']}` | | | | |")
    return rows


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    def load(name: str) -> dict:
        return json.loads((results / name).read_text())

    parts = [ner_compression_rows(load("ner_compression.json")), ner_soup_rows(load("ner_emb_h64_soup_swa.json")),
             nmt_kd_rows(load("nmt_kd.json"))]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
