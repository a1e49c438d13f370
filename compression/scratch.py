"""Freshly initialised models with a pruned model's head layout (the "trained from scratch" baseline).

Voita et al. compare a head-pruned model with one of the same head counts trained from
scratch. `scratch_init` builds that starting point: a new module of the pruned checkpoint's
class and hyper-parameters, initialised like any dense model of that architecture (same seed,
same weights), then cut to the pruned checkpoint's heads (`compression.prune.head_config`).
Saved as a checkpoint, it starts a normal training run through `init_from`, which rebuilds
the head layout from the file's compression spec.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule

from compression.gates import attached_gates
from compression.prune import apply_head_config, head_config
from compression.pruning_pipeline import save_checkpoint
from core.tasks import load_task_module


def scratch_init(pruned: LightningModule, seed: int = 0) -> LightningModule:
    """A new module like `pruned` (class, hyper-parameters, vocabulary) with fresh weights from
    `seed` and the same remaining heads; no gates, no `init_from`, no teacher."""
    network = pruned.compressible_network()
    if attached_gates(network):
        raise ValueError("scratch_init needs a pruned model without gates (prune it with --method gates first)")
    hparams = {k: v for k, v in pruned.resolved_hparams().items() if not k.startswith("_")}
    hparams.update({k: None for k in ("gates",) if k in hparams})
    torch.manual_seed(seed)
    fresh = type(pruned)(**hparams)
    apply_head_config(fresh.compressible_network(), head_config(network))
    if getattr(pruned, "vocab", None) is not None:
        fresh.vocab = pruned.vocab
    return fresh.eval()


def write_scratch_init(pruned_checkpoint: str | Path, output: str | Path, seed: int = 0) -> dict[str, list[int]]:
    """Write `scratch_init` of a pruned checkpoint to `output`; returns heads per layer by type."""
    _, pruned = load_task_module(pruned_checkpoint)
    fresh = scratch_init(pruned, seed)
    save_checkpoint(fresh, output)
    layout = head_config(fresh.compressible_network())
    return {kind: [len(layer) for layer in layers] for kind, layers in layout.items()}
