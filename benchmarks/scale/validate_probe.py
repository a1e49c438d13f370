"""One validation probe in fresh processes (run by `benchmarks.scale.run`): `train.py --fit false` with the given
arguments (its first, cold validation, timed into metrics.json), then `--again` more validations of the same
model, as every later epoch of a training run validates (warm: kernels chosen, buffers allocated); rank 0 prints
one JSON line with the cold and warm seconds and the scores.

    python -m benchmarks.scale.validate_probe --config configs/nmt/small.yaml --fit false --ckpt_path CKPT ...
"""

from __future__ import annotations

import json
import sys
import time

import torch

from core.cli import main as train_main


def main() -> None:
    """Validate as the command line says, then `--again N` (default 2) more times; print the JSON line."""
    args = sys.argv[1:]
    again = 2
    if "--again" in args:
        at = args.index("--again")
        again = int(args[at + 1])
        del args[at : at + 2]
    cli = train_main(args)
    trainer = cli.trainer
    warm, scores = [], []
    for _ in range(again):
        start = time.perf_counter()
        (metrics,) = trainer.validate(cli.model, cli.datamodule, verbose=False)
        warm.append(time.perf_counter() - start)
        scores.append(metrics)
    if trainer.is_global_zero:
        run = json.loads(open(f"{trainer.logger.log_dir}/metrics.json").read())["validate"]
        print(json.dumps({"processes": trainer.world_size, "threads_per_process": torch.get_num_threads(),
                          "cold_seconds": run["seconds"], "warm_seconds": warm, **run,
                          "same_scores_every_validation": all(s == scores[0] for s in scores)
                          and all(scores[0][k] == run[k] for k in scores[0])}))


if __name__ == "__main__":
    main()
