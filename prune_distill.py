"""Prune-then-distil a BERT sentence encoder (issue 6): score -> prune -> distil -> evaluate -> report.

    .venv/bin/python prune_distill.py --config configs/sts/minilm_prune_distill.yaml [--epochs 2 ...]
    .venv/bin/python prune_distill.py --sweep configs/sts/prune_distill_sweep.yaml --run ffn25   # a variant

Every key of `sts.pipeline.PipelineConfig` can be set in the YAML or overridden on the command
line; an unknown key or a bad value is refused with the key named.
"""

import logging
import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from core.sweep import expand_sweep
from sts.pipeline import PipelineConfig, run_pipeline


def parse(args: list[str] | None = None) -> PipelineConfig:
    """The pipeline config from `--config` YAML files and command-line overrides."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PipelineConfig)
    values = parser.parse_args(expand_sweep(sys.argv[1:] if args is None else list(args)))
    values.pop("config", None)
    return PipelineConfig(**values.as_dict())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_pipeline(parse())
