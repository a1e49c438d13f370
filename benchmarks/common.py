"""The results file of a benchmark that compresses one teacher checkpoint into rows."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import lightning as L
import torch

from core.training import file_sha256, git_commit

log = logging.getLogger(__name__)


def open_results(args: argparse.Namespace, benchmark: str, same_settings: tuple[str, ...] = ()) -> dict:
    """The rows already in `args.out` if they were measured on the same teacher file (SHA-256) and the
    same values of the `same_settings` arguments; else no rows. Header fields are refreshed."""
    sha = file_sha256(args.teacher)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    previous = results.get("settings", {})
    if results.get("teacher_sha256") != sha or any(previous.get(k) != getattr(args, k) for k in same_settings):
        results = {"rows": []}
    results.update({"benchmark": benchmark, "teacher": str(args.teacher), "teacher_sha256": sha,
                    "git_commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
    return results


def run_stages(study: str, stages: dict, args: argparse.Namespace, render) -> dict:
    """Run `args.stages` of a staged study into `args.out` (stages measured before are kept), writing the JSON
    and `render(results)` markdown after each stage; each block records its commit and command."""
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for stage in args.stages:
        log.info("stage %s", stage)
        results[stage] = {**stages[stage](args), "git_commit": git_commit(),
                          "command": f"python -m benchmarks.{study}.run --stages {stage}"}
        write_results(args.out, results, render(results))
    return results


def write_results(path: Path, results: dict, markdown: str | None = None) -> None:
    """Write the JSON (and its markdown table beside it, same name with .md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown)
    log.info(f"wrote {path}")


def quiet_trainer(progress: bool = False, **kwargs) -> L.Trainer:
    """A CPU Trainer for a study's in-process fits and evaluations: no logger, no model summary (its FLOPs column
    reads 0: `compression.measure` measures FLOPs), a progress bar only on request."""
    kwargs.setdefault("use_distributed_sampler", False)  # the lab's batch samplers shard themselves
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=progress, enable_model_summary=False,
                     **kwargs)
