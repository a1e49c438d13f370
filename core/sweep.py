"""A sweep is one YAML file: the configs every run shares and, per run, the few keys that differ.

    # configs/nmt/gates_l0_sweep.yaml
    configs: [configs/nmt/small.yaml, configs/nmt/gates_l0.yaml]
    logger_name: nmt_gates_l0            # each run logs as <logger_name>_<run>
    runs:
      "0.05": {}                         # the configs as they are
      "0.1_enc": {model.init_args.gates: {types: [encoder_self], l0_lambda: 0.1, lr: 0.1}}

`python train.py --sweep configs/nmt/gates_l0_sweep.yaml --run 0.1_enc [more flags]` trains one run
(`prune_distill.py --sweep configs/sts/prune_distill_sweep.yaml --run ffn25` likewise); `run_overrides`
gives a study the same arguments (`core.runs.train_or_resume`). Overrides are dotted config keys, passed
to jsonargparse as command-line values, so a bad key fails there by name.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sweep:
    """The shared `configs`, the runs' overrides by run name, and the logger-name prefix."""

    path: Path
    configs: tuple[str, ...]
    runs: dict[str, dict[str, Any]]
    logger_name: str | None = None


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; one clear ValueError naming the file and key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - {"configs", "runs", "logger_name"}:
        raise ValueError(f"{path}: a sweep has the keys configs, runs and logger_name; got {sorted(data)}")
    configs, runs = data.get("configs"), data.get("runs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise ValueError(f"{path}: 'configs' must be a non-empty list of config paths")
    if not isinstance(runs, dict) or not runs:
        raise ValueError(f"{path}: 'runs' must map run names to overrides ({{}} for none)")
    for name, overrides in runs.items():
        if not isinstance(overrides, dict | type(None)):
            raise ValueError(f"{path}: run {name!r} must map dotted config keys to values, got {overrides!r}")
    for config in configs:
        if not (REPO_ROOT / config).is_file() and not Path(config).is_file():
            raise ValueError(f"{path}: config {config!r} does not exist")
    return Sweep(path, tuple(configs), {str(k): dict(v or {}) for k, v in runs.items()}, data.get("logger_name"))


def run_overrides(sweep: Sweep, run: str) -> list[str]:
    """The run's overrides as `--key value` train.py arguments (strings as they are, other values as JSON, which
    jsonargparse parses like YAML), to come after the sweep's configs."""
    if run not in sweep.runs:
        raise ValueError(f"{sweep.path}: no run {run!r}; runs are {list(sweep.runs)}")
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    return [a for key, value in sweep.runs[run].items() for a in (f"--{key}", text(value))]


def sweep_args(sweep: Sweep, run: str) -> list[str]:
    """train.py arguments of one run: the shared configs, the logger name, the run's overrides."""
    args = [a for config in sweep.configs for a in ("--config", config)]
    if sweep.logger_name:
        args += ["--trainer.logger.init_args.name", f"{sweep.logger_name}_{run}"]
    return args + run_overrides(sweep, run)


def expand_sweep(args: list[str]) -> list[str]:
    """`--sweep FILE --run NAME` replaced by that run's arguments (`sweep_args`); the other arguments kept after."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--sweep")
    pre.add_argument("--run")
    known, rest = pre.parse_known_args(args)
    if known.sweep is None:
        if known.run is not None:
            raise ValueError("--run names a run of a sweep: give --sweep FILE too")
        return args
    sweep = load_sweep(known.sweep)
    if known.run is None:
        raise ValueError(f"--sweep {known.sweep}: name the run with --run (one of {list(sweep.runs)})")
    return sweep_args(sweep, known.run) + rest
