"""Prune-then-distil a BERT sentence encoder (issue 6): score -> prune -> distil -> evaluate -> report.

    .venv/bin/python prune_distill.py --config configs/sts/minilm_half_heads.yaml [--epochs 2 ...]

Every key of `sts.pipeline.PipelineConfig` can be set in the YAML or overridden on the command
line; an unknown key or a bad value is refused with the key named.
"""

import logging

from jsonargparse import ActionConfigFile, ArgumentParser

from sts.pipeline import PipelineConfig, run_pipeline


def parse(args: list[str] | None = None) -> PipelineConfig:
    """The pipeline config from `--config` YAML files and command-line overrides."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PipelineConfig)
    values = parser.parse_args(args)
    values.pop("config", None)
    return PipelineConfig(**values.as_dict())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_pipeline(parse())
