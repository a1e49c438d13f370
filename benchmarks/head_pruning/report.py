"""Markdown tables and plots of `benchmarks.head_pruning.run` results (kept apart so the script stays short)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on benchmark machines
import matplotlib.pyplot as plt
from PIL import Image

SHORT = {"encoder_self": "enc", "decoder_self": "dec", "decoder_cross": "cross", "bert_self": "bert"}


def plot_curve(rows: list[dict], ylabel: str, title: str, path: Path) -> Path:
    """Quality vs share of heads pruned, Taylor vs random mean (individual seeds faint)."""
    x = [100 * r["fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(x, [r["taylor"] for r in rows], "o-", label="Taylor importance")
    ax.plot(x, [r["random_mean"] for r in rows], "s--", label="random (mean)")
    seeds = sorted(k for k in rows[0] if k.startswith("random_") and k != "random_mean")
    for key in seeds:
        ax.plot(x, [r[key] for r in rows], ".", color="grey", alpha=0.5)
    ax.set(xlabel="% of all heads pruned (one shot)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap_from_gif(gif: Path, path: Path) -> Path:
    """The last frame of a GateHeatmap GIF (P(open) at the end of gate training) as a PNG."""
    with Image.open(gif) as image:
        image.seek(image.n_frames - 1)
        image.convert("RGB").save(path)
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _heads(kept: dict[str, int]) -> str:
    return " / ".join(str(v) for v in kept.values())


def _curve_table(section: dict, digits: int) -> list[str]:
    lines = [f"Metric: {section['metric']}; Taylor scores on {section['score_sentences']} sentences; "
             f"random = mean of {section['random_seeds']} seeds. Plot: `{Path(section.get('plot', '')).name}`", "",
             "| % heads pruned | heads kept by Taylor (per type) | Taylor | random |", "|---|---|---|---|"]
    for r in section["rows"]:
        lines.append(f"| {100 * r['fraction']:.0f} | {_heads(r['heads_kept'])} | {_fmt(r['taylor'], digits)} "
                     f"| {_fmt(r['random_mean'], digits)} |")
    return lines


def _lambda_label(row: dict) -> str:
    """The L0 weight of a gate row: one number, or one per gated type (`enc 0.06 / dec 0.2 / cross 0.03`)."""
    weights = row.get("l0_lambda", row["lambda"].removesuffix("_enc"))
    if isinstance(weights, dict):
        return " / ".join(f"{SHORT[kind]} {w:g}" for kind, w in weights.items())
    return str(weights)


def recipe_label(row: dict) -> str:
    """The recovery recipe of a fine-tuned gate row, `<epochs> ep <config stem>` (rows before recipes were recorded
    used finetune_pruned.yaml)."""
    return f"{row['finetune_epochs']} ep {Path(row.get('finetune_config', 'finetune_pruned')).stem}"


def _layout(heads_per_layer: dict[str, list[int]]) -> str:
    """A hashable key of a model's head counts per attention type and layer."""
    return json.dumps(heads_per_layer, sort_keys=True)


def markdown(state: dict) -> str:
    """The whole results file as markdown (only the stages that have run)."""
    meta = state.get("meta", {})
    out = ["# Attention-head pruning (issue 5)", "",
           f"Teacher `{meta.get('teacher')}` ({meta.get('teacher_epochs')} epochs); commit `{meta.get('git_commit')}`"
           + ("; **SMOKE RUN (tiny slices, numbers meaningless)**" if meta.get("smoke") else ""), ""]
    if g := state.get("gates"):
        # a from-scratch model belongs to every gate row with its head layout (seed replicates, the KD variant)
        scratch = {_layout(r["heads_per_layer"]): r for r in state.get("scratch", {}).get("rows", [])}
        t = g["teacher_heads"]
        out += ["## L0 gates (Voita et al.)", "",
                f"Gate fine-tuning {g['epochs']} epochs from the teacher, heads with eval gate <= "
                f"{g['gate_threshold']} cut out (BLEU of the gated model = BLEU pruned: the cut is exact); "
                "recovery fine-tuning of the pruned model with the recipe named in its row. "
                f"Teacher: {_heads(t)} heads (enc / dec / cross), test2016 BLEU "
                f"{_fmt(g['teacher_bleu'])} (beam 5).", "",
                "Targets: >= 75 % of encoder heads pruned with <= 0.25 BLEU lost; >= 60 % of all heads with <= 0.5.",
                "", "| λ (gated types) | heads kept enc / dec / cross | % enc / all pruned | BLEU pruned "
                "| Δ vs teacher | BLEU pruned + fine-tuned (Δ) | same heads from scratch | params | FLOPs/token |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            s = scratch.get(_layout(r["heads_per_layer"]), {}).get("bleu")
            enc = 100 * (1 - r["heads_kept"]["enc"] / t["enc"])
            every = 100 * (1 - sum(r["heads_kept"].values()) / sum(t.values()))
            tuned = (f"{_fmt(r['bleu_finetuned'])} ({-r['bleu_lost_finetuned']:+.2f}, {recipe_label(r)})"
                     if "bleu_finetuned" in r else "–")
            gated = "/".join(r.get("gate_types", ["enc", "dec", "cross"])) + (" + KD" if r.get("kd") else "")
            gated += "" if r.get("seed") is None else f", seed {r['seed']}"
            out.append(f"| {_lambda_label(r)} ({gated}) | {_heads(r['heads_kept'])} "
                       f"| {enc:.0f} / {every:.0f} | {_fmt(r['bleu'])} "
                       f"| {-r['bleu_lost']:+.2f} | {tuned} | {_fmt(s)} | {r['params']:,} | {r['flops']:,.0f} |")
        if "scratch" in state:
            out += ["", f"From scratch: {state['scratch']['budget']}."]
        if g.get("heatmap"):
            out += ["", f"![P(open) per layer × head at the end of gate training]({Path(g['heatmap']).name})"]
        out.append("")
    if sig := state.get("significance"):
        t = sig["teacher"]
        out += ["## Is a BLEU difference real? (paired bootstrap)", "",
                f"Each model's test2016 translations against the teacher's ({_fmt(t['bleu'])} ± {t['ci95']:.2f}), "
                f"{sig['samples']} resamples of the test sentences; ± is the half-width of the 95 % interval; "
                f"p < 0.05: the difference is real. `{sig['signature']}`", "",
                "| model | BLEU ± 95 % | Δ vs teacher | p-value |", "|---|---|---|---|"]
        out += [f"| {r['model']} | {_fmt(r['bleu'])} ± {r['ci95']:.2f} | {r['delta']:+.2f} | {r['p_value']:.3f} |"
                for r in sig["rows"]]
        out.append("")
    if c := state.get("curve_nmt"):
        out += ["## BLEU vs heads pruned, Multi30k (Michel et al.)", "", *_curve_table(c, 2), ""]
    if lat := state.get("latency"):
        sizes = list(lat["rows"][0]["speedup"])
        out += ["## CPU latency vs FLOPs", "", f"Measured: {lat['measure']}.", "",
                "| model | heads kept | params | FLOP reduction | " + " | ".join(f"speed-up @{b}" for b in sizes)
                + " | " + " | ".join(f"ratio @{b}" for b in sizes) + " |",
                "|---|---|---|---|" + "---|" * (2 * len(sizes))]
        for r in lat["rows"]:
            out.append(f"| {r['model']} | {_heads(r['heads_kept'])} | {r['params']:,} | {r['flop_reduction']:.2f}× | "
                       + " | ".join(f"{r['speedup'][b]:.2f}×" for b in sizes) + " | "
                       + " | ".join(f"{r['ratio'][b]:.2f}" for b in sizes) + " |")
        out.append("")
    if n := state.get("curve_ner"):
        out += ["## F1 vs heads pruned, CoNLL-2003 tagger", "", *_curve_table(n, 4), ""]
    return "\n".join(out)


def render(results: Path) -> str:
    """Markdown of the study's results file (with its plots beside it)."""
    import json

    return markdown(json.loads((results / "head_pruning.json").read_text()))
