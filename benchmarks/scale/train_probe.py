"""One timed training run in a fresh process (run by `benchmarks.scale.run`): `train.py` with the given arguments
plus a callback timing the training loop after its first 20 batches; prints one JSON line with those batches'
seconds and target tokens (the same batches for every precision and data source).

    python -m benchmarks.scale.train_probe --config configs/nmt/small.yaml --trainer.max_steps 150 ...
"""

from __future__ import annotations

import json
import sys
import time

from lightning.pytorch.callbacks import Callback

from core.cli import main as train_main


class TrainLoopTimer(Callback):
    """Wall seconds and target tokens of the training batches after the first `warmup` (kernel selection and
    allocator warm-up are a start cost, not a training speed), up to the end of the last batch."""

    def __init__(self, warmup: int = 20) -> None:
        self.warmup, self.tokens, self.batches, self.start, self.end = warmup, 0, 0, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self.batches += 1
        if self.batches == self.warmup + 1:
            self.start = time.perf_counter()
        if self.start is not None:
            self.tokens += int((batch["tgt_out"] != pl_module.cfg.pad_id).sum())

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: D102
        self.end = time.perf_counter()


def main() -> None:
    """Train as the command line says; print the JSON line."""
    cli = train_main([*sys.argv[1:], "--trainer.callbacks+=benchmarks.scale.train_probe.TrainLoopTimer"])
    # by name: run with -m, this file is `__main__`, and the CLI imported it again under its package name
    timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == TrainLoopTimer.__name__)
    seconds = timer.end - timer.start
    print(json.dumps({"precision": str(cli.trainer.precision), "steps": cli.trainer.global_step,
                      "timed_batches": timer.batches - timer.warmup, "seconds": seconds, "target_tokens": timer.tokens,
                      "target_tokens_per_s": timer.tokens / seconds,
                      "train_loss": float(cli.trainer.callback_metrics["train/loss"])}))


if __name__ == "__main__":
    main()
