"""Tables of the tagging study (`benchmarks/results/ner/`)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ner.run import table_rows


def ner_soup_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/ner/ner_soup*.json (issue 3): taggers and their soups, both decodings."""
    rows = ["| CoNLL-2003 tagger / soup | dev F1 argmax / constrained | test F1 argmax / constrained "
            "| test PER / LOC / ORG / MISC (constrained) |", "|---|---|---|---|"]
    for row in r["rows"]:
        decoded = {split: row.get(f"{split}_constrained", row[split]) for split in ("dev", "test")}
        types = " / ".join(f"{decoded['test']['per_type'][t]:.3f}" for t in ("PER", "LOC", "ORG", "MISC"))
        rows.append(f"| {row.get('checkpoint', row['name'])} | {row['dev']['f1']:.4f} / {decoded['dev']['f1']:.4f} "
                    f"| {row['test']['f1']:.4f} / {decoded['test']['f1']:.4f} | {types} |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}` | | |")
    return rows


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    conll = json.loads((results / "ner_conll.json").read_text())
    head = ["| CoNLL-2003 NER, all-MiniLM-L6-v2 (uncased) | params | entity F1 (word level, seqeval) | speed |",
            "|---|---|---|---|"]
    soup = ner_soup_rows(json.loads((results / "ner_soup_seeds.json").read_text()))
    return "\n".join([*head, *table_rows(conll), "", *soup]) + "\n"
