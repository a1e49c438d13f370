"""Run-or-resume: one training run of `train.py` that is skipped when complete and resumed when cut short.

Studies (`benchmarks/`) and pipelines (`prune_heads.py --finetune_epochs`) train many runs, each for a
fixed number of epochs. A job killed halfway must not start its runs again from scratch, nor take a
half-trained run for a finished one: `train_or_resume` looks at the run folder's `last.ckpt` and counts
its finished epochs (`core.training.epochs_done`) before it decides.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.training import epochs_done

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def run_folder(work: str | Path, name: str) -> Path:
    """Where `train_or_resume` puts run `name`: `<work>/<name>/version_0`."""
    return Path(work) / name / "version_0"


def final_checkpoint(run: str | Path) -> Path:
    """The weights a run ends with: the SWA average when its recipe averages, else last.ckpt."""
    folder = Path(run) / "checkpoints"
    return folder / "swa.ckpt" if (folder / "swa.ckpt").is_file() else folder / "last.ckpt"


def train_or_resume(name: str, configs: Sequence[str | Path], work: str | Path, epochs: int,
                    args: Sequence[str] = ()) -> Path:
    """Train `configs` (+ `args`, any train.py flags) for `epochs` epochs as run `name` under `work`, in a
    subprocess; returns the run folder. A run whose last.ckpt has all its epochs is skipped, one cut short
    resumes from it (`--ckpt_path`), so re-invoking a killed study repeats no finished work."""
    run = run_folder(work, name)
    last = run / "checkpoints/last.ckpt"
    resume: list[str] = []
    if last.is_file():
        done = epochs_done(last)
        if done >= epochs:
            log.info("[train] %s: %s has %d epochs, skipped", name, run, done)
            return run
        resume = ["--ckpt_path", str(last)]
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *[a for c in configs for a in ("--config", str(c))],
           "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.save_dir", str(work),
           "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", "0", "--test", "false",
           *resume, *args]
    log.info("[train] %s", shlex.join(cmd))
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    log.info("[train] %s: %.0f s", name, time.time() - start)
    return run
