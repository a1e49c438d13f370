"""Tables of the translation study (`benchmarks/results/nmt/`)."""

from __future__ import annotations

import json
from pathlib import Path


def nmt_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/nmt/nmt_multi30k.json."""
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
        f"| measured at | `{r['git_commit'][:10]}`, `python -m benchmarks.nmt.run --budget_minutes "
        f"{r['budget_minutes']:.0f} --epochs {r['planned_epochs']}` |",
    ]
    return rows


def shared_teacher_rows(r: dict) -> list[str]:
    """Rows for benchmarks/results/nmt/shared_teacher.json: the shared `make train` checkpoint re-decoded."""
    same = r.get("sentences_differing_from_reference")
    rows = ["| shared checkpoint `nmt_small_swa.ckpt` (`make train`, 67 min), decoded today | value |", "|---|---|",
            f"| test2016 sacreBLEU / chrF (beam {r['beam_size']}) | {r['bleu']:.2f} / {r['chrf']:.2f} |",
            f"| decoding, sentences/s (beam {r['beam_size']}) | {r['sents_per_s']:.1f} |"]
    if same is not None:
        rows.append(f"| sentences differing from the hypotheses of an earlier commit | {same} of {r['sentences']} |")
    if (previous := r.get("same_hypotheses_as_previous")) is not None:
        rows.append(f"| hypotheses identical to those measured at `{r['previous_git_commit'][:10]}` | "
                    f"{'yes' if previous else 'no'} (SHA-256 `{r['hypotheses_sha256'][:12]}`) |")
    rows.append(f"| measured at | `{r['git_commit'][:10]}`, `{r['command']}` |")
    return rows


def render(results: Path) -> str:
    """Markdown of every result file of the study."""
    def load(name: str) -> dict:
        return json.loads((results / name).read_text())

    rows = [*shared_teacher_rows(load("shared_teacher.json")), "", *nmt_rows(load("nmt_multi30k.json"))]
    return "\n".join(rows) + "\n"
