"""Training plumbing shared by every task: atomic checkpoints, RNG state, run records."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from lightning import LightningModule
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to `<path>.tmp`, fsync, then rename over `<path>`.

    A process killed mid-save leaves the previous checkpoint intact (rename is atomic on
    POSIX), so `last.ckpt` is always loadable.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def save_module_checkpoint(module: LightningModule, path: str | Path, **hparam_overrides: Any) -> dict:
    """Write, atomically, what `Trainer.save_checkpoint` stores for the model part of `module`: its state
    dict, hyper-parameters (as its `on_save_checkpoint` resolves them, then `hparam_overrides` applied) and
    whatever else that hook adds (e.g. a pruned model's compression spec), so `load_from_checkpoint`
    rebuilds it from the file alone."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(ckpt)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], **hparam_overrides}
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
    return ckpt


class RNGStateCallback(Callback):
    """Stores the Python, NumPy and torch RNG states in checkpoints and restores them.

    Lightning does not, and without it a resumed run draws different dropout masks.
    """

    @override
    def state_dict(self) -> dict:
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        random.setstate(state_dict["python"])
        np.random.set_state(state_dict["numpy"])
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def git_commit(repo_dir: Path | None = None) -> str:
    """The current git commit (with '-dirty' if the tree has changes), or 'unknown'."""
    cwd = repo_dir or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path) -> dict:
    """Size and SHA-256 of a data file, for run records."""
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def epochs_done(checkpoint: str | Path) -> int:
    """Training epochs a Lightning checkpoint has finished: decides whether a run is complete or must resume from
    the checkpoint. An epoch is counted `completed` only after its end hooks, where last.ckpt is written, so an
    epoch whose last batch has run counts too."""
    loops = torch.load(checkpoint, map_location="cpu", weights_only=False)["loops"]["fit_loop"]
    last_batch_ran = loops["epoch_loop.batch_progress"]["is_last_batch"]
    return int(loops["epoch_progress"]["total"]["completed"]) + int(last_batch_ran)


def write_run_record(log_dir: Path, data_files: list[Path], extra: dict | None = None) -> Path:
    """Write `run_record.json` (git commit, data fingerprints, extras) into a run folder."""
    record = {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "data_files": [file_fingerprint(Path(p)) for p in data_files],
        **(extra or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    out = log_dir / "run_record.json"
    out.write_text(json.dumps(record, indent=2))
    return out


class LastBatchSafeCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose step-based saves never fall on the last batch of an epoch.

    Lightning 2.6 resumes a checkpoint written in `on_train_batch_end` of an epoch's last
    batch one epoch too far (the epoch counter is advanced twice), so that save is taken in
    `on_train_epoch_end` instead, a moment later, where resuming is exact. It also writes
    last.ckpt every epoch with save_top_k=0, which Lightning 2.6 does not (`_save_last_if_due`).
    """

    def _save_last_if_due(self, trainer, at_epoch_end: bool) -> None:
        """Write last.ckpt where Lightning would save (epoch end, or after validation when saves follow it).

        Lightning 2.6 writes it there only if a top-k checkpoint was saved at the same step, so with
        save_top_k=0 (train.py's default) no epoch would leave one to resume from. A no-op when
        Lightning just saved (the step counts as saved).
        """
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and self._should_save_on_train_epoch_end(trainer) == at_epoch_end:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_epoch_end=False)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._every_n_train_steps >= 1 and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._deferred = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_epoch_end=True)
        if getattr(self, "_deferred", False) and not self._should_skip_saving_checkpoint(trainer):
            self._deferred = False
            candidates = self._monitor_candidates(trainer)
            if trainer.global_step % self._every_n_train_steps == 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
