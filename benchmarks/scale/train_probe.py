"""One timed training run in a fresh process (run by `benchmarks.scale.run`): `train.py` with the given arguments
plus a Lightning `Timer`; prints one JSON line with the training loop's seconds and the target tokens it trained on
(counted from the datamodule's own batches, the same for every precision).

    python -m benchmarks.scale.train_probe --config configs/nmt/small.yaml --trainer.max_steps 150 ...
"""

from __future__ import annotations

import json
import sys

from lightning.pytorch.callbacks import Timer

from core.cli import main as train_main


def main() -> None:
    """Train as the command line says; print the JSON line."""
    cli = train_main([*sys.argv[1:], "--trainer.callbacks+=lightning.pytorch.callbacks.Timer"])
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, Timer))
    steps = cli.trainer.global_step * cli.trainer.accumulate_grad_batches
    dm = cli.datamodule
    dm._resume = None  # count the run's batches from the start of the epoch
    tokens = 0
    for _, batch in zip(range(steps), dm.train_dataloader(), strict=False):
        tokens += int((batch["tgt_out"] != 0).sum())
    seconds = timer.time_elapsed("train")
    print(json.dumps({"precision": str(cli.trainer.precision), "steps": cli.trainer.global_step, "seconds": seconds,
                      "target_tokens": tokens, "target_tokens_per_s": tokens / seconds,
                      "train_loss": float(cli.trainer.callback_metrics["train/loss"])}))


if __name__ == "__main__":
    main()
