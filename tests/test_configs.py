"""Every experiment config in configs/ parses: a bad key or value in any YAML fails here, naming the file.

LightningCLI configs (everything outside configs/sts) go through `core.cli.main`, i.e. the exact parser
`train.py` builds, stopped right after parsing: keys and types of model, data, trainer, callbacks and
checkpoint are validated against the classes' signatures, but nothing is instantiated (no pretrained
weights, no data, no `init_from` checkpoint). A delta config is layered over the base its header comment
names (`python train.py --config BASE --config DELTA`), as it is meant to be run.
configs/sts/*.yaml go through `prune_distill.parse`, into a `PipelineConfig`.
"""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from jsonargparse import Namespace

import core.cli
import prune_distill
from core.sweep import load_sweep
from sts.pipeline import PipelineConfig

CONFIGS = REPO / "configs"
STS_CONFIGS = sorted((CONFIGS / "sts").glob("*.yaml"))
SWEEPS = sorted(CONFIGS.rglob("*_sweep.yaml"))
STS_CONFIGS = [p for p in STS_CONFIGS if p not in SWEEPS]
CLI_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in STS_CONFIGS and p not in SWEEPS)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


class _Parsed(Exception):  # a control-flow signal, not an error
    def __init__(self, config: Namespace) -> None:
        super().__init__()
        self.config = config


class _ParseOnlyCLI(core.cli.LabCLI):
    """LabCLI that raises parse errors (instead of exiting) and stops once the config is parsed."""

    def init_parser(self, **kwargs):
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


@pytest.fixture
def parse_cli(monkeypatch):
    """`parse_cli(args)`: the config `train.py args` would run with (train.py's own parser, nothing built)."""
    monkeypatch.setattr(core.cli, "LabCLI", _ParseOnlyCLI)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI warns when given both args and sys.argv

    def parse(args: list[str]) -> Namespace:
        with pytest.raises(_Parsed) as parsed:
            core.cli.main(args)
        return parsed.value.config

    return parse


def _base_of(path: Path) -> Path | None:
    """The base config a delta's header comment layers it over (`--config BASE --config <this file>`)."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    usage = " ".join(header).replace("\\", " ")
    match = re.search(r"--config\s+(\S+)\s+--config\s+" + re.escape(_rel(path)) + r"(\s|$)", usage)
    return REPO / match.group(1) if match else None


def _assert_values_applied(config: Namespace, values: dict, prefix: str = "") -> None:
    """Every value the YAML sets is in the parsed config (a delta's values win over its base)."""
    for key, value in values.items():
        dotted = prefix + key
        parsed = config.get(dotted)
        if isinstance(value, dict) and isinstance(parsed, Namespace):
            _assert_values_applied(config, value, dotted + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "class_path" in v for v in value):
            assert [c.class_path for c in parsed] == [v["class_path"] for v in value], dotted
        else:
            if isinstance(parsed, tuple):  # e.g. betas: tuple[float, float]
                parsed = list(parsed)
            assert parsed == value, f"{dotted}: parsed {parsed!r}, the YAML sets {value!r}"


@pytest.mark.parametrize("path", CLI_CONFIGS, ids=_rel)
def test_lightning_config_parses(path, parse_cli):
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = _base_of(path)
    if base is None:
        assert {"model", "data"} <= values.keys(), (
            f"{_rel(path)} has no model/data section, so it is a delta, but its header comment names no base "
            f"(a usage line `python train.py --config BASE --config {_rel(path)}`)")
        args = ["--config", str(path)]
    else:
        assert base.is_file(), f"{_rel(path)} is layered over {_rel(base)}, which does not exist"
        assert _base_of(base) is None, f"{_rel(path)}: its base {_rel(base)} is itself a delta"
        args = ["--config", str(base), "--config", str(path)]
    config = parse_cli(args)  # raises ArgumentError naming the key if anything does not validate
    assert config.model.class_path and config.data.class_path
    # Placeholders such as init_from: "<set ...>" pass parsing untouched (they fail only when training starts).
    _assert_values_applied(config, values)


@pytest.mark.parametrize("path", STS_CONFIGS, ids=_rel)
def test_sts_config_parses(path):
    config = prune_distill.parse(["--config", str(path)])
    assert isinstance(config, PipelineConfig)
    for key, value in yaml.safe_load(path.read_text(encoding="utf-8")).items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize(("old", "new"), [
    ("label_smoothing:", "lable_smoothing:"),  # model.init_args
    ("max_tokens:", "max_tokns:"),              # data.init_args
    ("peak_lr:", "peak_rl:"),                   # a callback's init_args
], ids=["model", "data", "callback"])
def test_misspelled_key_is_refused(parse_cli, tmp_path, old, new):
    text = (CONFIGS / "nmt/small.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    bad = tmp_path / "small.yaml"
    bad.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(ArgumentError, match=new.rstrip(":")):
        parse_cli(["--config", str(bad)])


@pytest.mark.parametrize("path", SWEEPS, ids=_rel)
def test_every_sweep_run_parses_with_its_overrides(path, parse_cli):
    sweep = load_sweep(path)
    for run, overrides in sweep.runs.items():
        if path.parent.name == "sts":  # a pipeline sweep: each override lands in the PipelineConfig
            config = prune_distill.parse(["--sweep", str(path), "--run", run])
            assert {k: getattr(config, k) for k in overrides} == overrides, run
            continue
        config = parse_cli(["--sweep", str(path), "--run", run])
        assert config.trainer.logger.init_args.name == f"{sweep.logger_name}_{run}"
        for key, value in overrides.items():
            parsed = config.get(key)
            if isinstance(value, dict):  # a section: the keys the run sets
                parsed = vars(parsed) if isinstance(parsed, Namespace) else parsed
                parsed = {k: v for k, v in parsed.items() if k in value}
            assert parsed == value, f"{run}: {key}"
