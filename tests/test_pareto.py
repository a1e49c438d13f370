"""benchmarks.pareto: the front is what nothing beats on both axes; every known result file becomes points."""

import json
from pathlib import Path

from benchmarks.pareto import Point, collect, markdown, pareto_front, plot


def point(recipe: str, quality: float, ms: float | None, params: float | None) -> Point:
    return Point("nmt", recipe, quality, ms, params, "x.json")


def test_front_keeps_only_undominated_points() -> None:
    points = [point("big", 38.0, 30.0, 7e6), point("int8", 37.9, 15.0, 7e6), point("bad", 37.0, 20.0, 7e6),
              point("small", 35.0, 10.0, 3e6), point("untimed", 39.0, None, 9e6)]
    assert pareto_front(points, "latency_ms") == {"big", "int8", "small"}
    assert pareto_front(points, "params") == {"untimed", "big", "small"}  # int8: as big as "big", lower quality


def test_deploy_results_become_points_with_their_float_models_size(tmp_path: Path) -> None:
    row = lambda name, bleu, ms: {"name": name, "bleu": bleu, "latency_ms": {"1": 1.0, "16": ms, "64": 9.0}}  # noqa: E731
    deploy = {"nmt": {"rows": [row("teacher fp32", 38.2, 40.0), row("teacher int8", 38.0, 20.0),
                               row("teacher onnx int8", 38.1, 15.0)],
                      "sizes": {"teacher fp32": {"params": 7.6e6, "bytes": 3e7}}}}
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy/deploy.json").write_text(json.dumps(deploy))
    points = collect(tmp_path)
    assert [(p.recipe, p.latency_ms, p.params) for p in points] == [
        ("teacher fp32", 40.0, 7.6e6), ("teacher int8", 20.0, 7.6e6), ("teacher onnx int8", 15.0, 7.6e6)]
    text = markdown(points)
    assert "| teacher onnx int8 | 38.10 | 15.0 | 7.60M | latency |" in text
    plot("nmt", points, tmp_path / "nmt.png")
    assert (tmp_path / "nmt.png").stat().st_size > 10_000
