"""One quality-vs-cost report across every compression run: for each task (NMT BLEU, NER F1, STS Spearman), quality
against measured latency (batch 16) and against parameters, the Pareto front marked, each point labelled with its
recipe.

    python -m benchmarks.pareto      # reads benchmarks/results/**/*.json, writes benchmarks/results/pareto/

Latency points come only from results timed at batch 16 in one fresh process with the models alternating
(`benchmarks/results/deploy/deploy.json`), so every latency in a plot was measured side by side with the others.
The parameter panels add the runs of the other studies whose result files give quality and parameters (KD students,
shared / factorised models, pruned models), each on its own teacher. Writes `<task>.png` and `pareto.md`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks/results"
OUT = RESULTS / "pareto"
METRICS = {"nmt": "test2016 BLEU (beam 5)", "ner": "CoNLL-2003 test F1",
           "sts": "STS-B dev en Spearman (max length 256)"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One model: its recipe, quality, batch-16 latency (None if not timed side by side) and parameters."""

    task: str
    recipe: str
    quality: float
    latency_ms: float | None
    params: float | None
    source: str


def _source(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _deploy_points(path: Path) -> list[Point]:
    """Every deployment of deploy.json (latency at batch 16; int8/bf16 keep their float model's parameter count)."""
    results, points = json.loads(path.read_text()), []
    quality = {"nmt": lambda r: r["bleu"], "ner": lambda r: 100 * r["f1"], "sts": lambda r: r["spearman_en"]}
    for task, block in results.items():
        sizes = block.get("sizes", {})
        for row in block["rows"]:
            float_name = row["name"].rsplit(" ", 2)[0] if "onnx" in row["name"] else row["name"].rsplit(" ", 1)[0]
            params = sizes.get(f"{float_name} fp32", {}).get("params")
            points.append(Point(task, row["name"], quality[task](row), row["latency_ms"]["16"], params,
                                _source(path)))
    return points


def _ner_compression_points(path: Path) -> list[Point]:
    return [Point("ner", f"{r['name']} (compression study)", 100 * r["test_f1"], None, r["params"]["total"],
                  _source(path)) for r in json.loads(path.read_text())["rows"] if "test_f1" in r]


def _nmt_kd_points(path: Path) -> list[Point]:
    return [Point("nmt", f"{r['name']} (KD study)", r["test_bleu"], None, r["params"]["total"],
                  _source(path)) for r in json.loads(path.read_text())["rows"] if "test_bleu" in r]


READERS = {"deploy/deploy.json": _deploy_points, "compression/ner_compression.json": _ner_compression_points,
           "compression/nmt_kd.json": _nmt_kd_points}


def collect(results: Path = RESULTS) -> list[Point]:
    """The points of every result file a reader knows (files not measured yet are skipped)."""
    return [p for name, read in READERS.items() if (results / name).is_file() for p in read(results / name)]


def pareto_front(points: list[Point], cost: str) -> set[str]:
    """Recipes no other point beats on both quality (higher) and `cost` ('latency_ms' or 'params', lower)."""
    usable = [p for p in points if getattr(p, cost) is not None]
    return {p.recipe for p in usable
            if not any(q.quality >= p.quality and getattr(q, cost) <= getattr(p, cost)
                       and (q.quality > p.quality or getattr(q, cost) < getattr(p, cost)) for q in usable)}


def plot(task: str, points: list[Point], path: Path) -> None:
    """Two panels: quality vs batch-16 latency and quality vs parameters, the front as a line, every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, cost, label in ((axes[0], "latency_ms", "latency, ms per batch of 16 (CPU, 2 threads)"),
                            (axes[1], "params", "parameters (millions)")):
        usable = [p for p in points if getattr(p, cost) is not None]
        front = pareto_front(usable, cost)
        scale = 1e-6 if cost == "params" else 1.0
        for p in usable:
            on = p.recipe in front
            ax.scatter(getattr(p, cost) * scale, p.quality, s=40 if on else 18, c="tab:red" if on else "tab:blue",
                       zorder=3)
            ax.annotate(p.recipe, (getattr(p, cost) * scale, p.quality), fontsize=6.5, xytext=(3, 3),
                        textcoords="offset points")
        line = sorted((getattr(p, cost) * scale, p.quality) for p in usable if p.recipe in front)
        if line:
            ax.plot(*zip(*line, strict=True), c="tab:red", lw=1, zorder=2, label="Pareto front")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(METRICS[task])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: quality vs cost of every measured recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def markdown(points: list[Point]) -> str:
    """A table per task: recipe, quality, latency, parameters, on which front, source file."""
    parts = []
    for task in METRICS:
        rows = [p for p in points if p.task == task]
        if not rows:
            continue
        fronts = {c: pareto_front(rows, c) for c in ("latency_ms", "params")}
        lines = [f"### {task}: {METRICS[task]}\n", f"![{task}]({task}.png)\n",
                 "| recipe | quality | ms @ b16 | params | Pareto front | source |", "|---|---|---|---|---|---|"]
        for p in sorted(rows, key=lambda p: -p.quality):
            on = [n for c, n in (("latency_ms", "latency"), ("params", "params")) if p.recipe in fronts[c]]
            ms = "–" if p.latency_ms is None else f"{p.latency_ms:.1f}"
            params = "–" if p.params is None else f"{p.params / 1e6:.2f}M"
            lines.append(f"| {p.recipe} | {p.quality:.2f} | {ms} | {params} | {', '.join(on) or '–'} | {p.source} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> None:
    """Collect, plot, write the markdown."""
    points = collect()
    OUT.mkdir(parents=True, exist_ok=True)
    for task in METRICS:
        if rows := [p for p in points if p.task == task]:
            plot(task, rows, OUT / f"{task}.png")
            log.info("wrote %s", OUT / f"{task}.png")
    (OUT / "pareto.md").write_text("# Quality vs cost, every measured recipe\n\n"
                                   "<!-- generated by `python -m benchmarks.pareto` -->\n\n" + markdown(points))
    log.info("wrote %s", OUT / "pareto.md")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
