"""One timed training run in a fresh process (run by `benchmarks.scale.run`): `train.py` with the given arguments
plus a callback timing the training loop; prints one JSON line with the training loop's seconds and the target
tokens it trained on (counted from the datamodule's own batches, the same for every precision).

    python -m benchmarks.scale.train_probe --config configs/nmt/small.yaml --trainer.max_steps 150 ...
"""

from __future__ import annotations

import json
import sys
import time

from lightning.pytorch.callbacks import Callback

from core.cli import main as train_main


class TrainLoopTimer(Callback):
    """Wall seconds from the start to the end of the training loop (Lightning's `Timer` has an enum argument
    the saved config cannot represent)."""

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: D102
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    """Train as the command line says; print the JSON line."""
    cli = train_main([*sys.argv[1:], "--trainer.callbacks+=benchmarks.scale.train_probe.TrainLoopTimer"])
    # by name: run with -m, this file is `__main__`, and the CLI imported it again under its package name
    timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == TrainLoopTimer.__name__)
    steps = cli.trainer.global_step * cli.trainer.accumulate_grad_batches
    dm = cli.datamodule
    dm._resume = None  # count the run's batches from the start of the epoch
    tokens = 0
    for _, batch in zip(range(steps), dm.train_dataloader(), strict=False):
        tokens += int((batch["tgt_out"] != 0).sum())
    seconds = timer.seconds
    print(json.dumps({"precision": str(cli.trainer.precision), "steps": cli.trainer.global_step, "seconds": seconds,
                      "target_tokens": tokens, "target_tokens_per_s": tokens / seconds,
                      "train_loss": float(cli.trainer.callback_metrics["train/loss"])}))


if __name__ == "__main__":
    main()
