"""Timing inputs for sentence encoders, and the pruned model vs layer dropping at equal speed (used by
`sts.pipeline` and `benchmarks.sts.latency`).

Latency itself is `compression.measure.latency` (models side by side, medians). `equal_speed_comparison`
reads a report's rows (`latency_ms` per batch size, `quality_vs_teacher`, `kept_layers` for layer-dropped
baselines).
"""

from __future__ import annotations

from itertools import pairwise

from tokenizers import Tokenizer

from sts.data import tokenize


def sentence_batches(tokenizer: Tokenizer, sentences: list[str], batch_sizes: list[int],
                     max_length: int) -> dict[int, dict]:
    """{B: the first B `sentences` (cycled if fewer) tokenized and padded}: timing inputs."""
    return {b: tokenize(tokenizer, (sentences * (b // len(sentences) + 1))[:b], max_length) for b in batch_sizes}


def equal_speed_comparison(rows: list[dict], batch_size: int = 16, name: str = "pruned + distilled") -> dict | None:
    """The layer-dropping quality at the speed of row `name` at `batch_size`: linear between the measured points.

    Speed = the teacher's median ms / the row's at that batch size (`latency_ms`). The layer-dropping
    curve is the teacher (all layers, 1.0x) plus every `kept_layers` row, as (speed-up, % of the
    teacher). Beyond the fastest measured point it is not extrapolated (None), with one exception:
    a model faster *and* better than the fastest layer-dropped row beats it (`dominates`), as long as
    dropping more layers does not raise quality. The verdict can differ by batch size: width
    pruning trims attention (more of the cost in long padded batches), layer dropping also the
    fixed per-layer cost (more of it in small batches).
    """
    ms = {r["name"]: r["latency_ms"][str(batch_size)] for r in rows if str(batch_size) in r.get("latency_ms", {})}
    row = next((r for r in rows if r["name"] == name), None)
    if "teacher" not in ms or row is None or name not in ms or "quality_vs_teacher" not in row:
        return None
    curve = sorted((ms["teacher"] / ms[r["name"]], r["quality_vs_teacher"], r["name"]) for r in rows
                   if ("kept_layers" in r or r["name"] == "teacher") and r["name"] in ms and "quality_vs_teacher" in r)
    if len(curve) < 2:  # no layer-dropping row to compare with
        return None
    speed, quality = ms["teacher"] / ms[name], row["quality_vs_teacher"]
    at_speed = None
    for (s0, q0, _), (s1, q1, _) in pairwise(curve):
        if s0 <= speed <= s1:
            at_speed = q0 + (q1 - q0) * (speed - s0) / (s1 - s0) if s1 > s0 else max(q0, q1)
    fastest_speed, fastest_quality, fastest = curve[-1]
    dominates = at_speed is None and speed > fastest_speed and quality > fastest_quality
    beats = True if dominates else None if at_speed is None else quality > at_speed
    return {"model": name, "batch_size": batch_size, "speedup": speed, "quality_vs_teacher": quality,
            "layer_dropping_quality_at_equal_speed": at_speed, "beats_layer_dropping": beats,
            "dominates": {"name": fastest, "speedup": fastest_speed, "quality_vs_teacher": fastest_quality}
            if dominates else None}


def equal_speed_lines(rows: list[dict], batch_sizes: list[int]) -> list[str]:
    """One sentence per batch size comparing the pruned model with layer dropping at its speed."""
    lines = []
    for b in batch_sizes:
        equal = equal_speed_comparison(rows, b)
        if equal is None:
            continue
        if equal.get("dominates"):
            fastest = equal["dominates"]
            lines.append(f"Batch {b}: {equal['model']} ({equal['speedup']:.2f}x, {equal['quality_vs_teacher']:.2f} %) "
                         f"is faster and better than the fastest layer-dropping row ({fastest['name']}: "
                         f"{fastest['speedup']:.2f}x, {fastest['quality_vs_teacher']:.2f} %): it beats layer dropping.")
            continue
        if equal["layer_dropping_quality_at_equal_speed"] is None:
            lines.append(f"Batch {b}: {equal['model']} runs at {equal['speedup']:.2f}x, outside the measured "
                         "layer-dropping range (no verdict).")
            continue
        verdict = "beats" if equal["beats_layer_dropping"] else "does not beat"
        lines.append(f"Batch {b}: at {equal['model']}'s speed ({equal['speedup']:.2f}x) layer dropping, interpolated "
                     f"between its measured rows, keeps {equal['layer_dropping_quality_at_equal_speed']:.2f} % of the "
                     f"teacher; {equal['model']} keeps {equal['quality_vs_teacher']:.2f} % ({verdict} it).")
    return lines
