"""A checkpoint stores the resolved config of its model once; `load_module` rebuilds the model from it.

A LightningModule's hyper-parameters are its constructor's typed arguments (dataclasses for the
architecture, the data spec, the optimiser, KD and gates). Two kinds of argument say how training
*starts* rather than what the model *is*: a pretrained folder, `init_from` weights, a `kd` teacher,
`keep_layers` of a deeper encoder. A saved model holds the result, so `ResolvedConfig` writes the
checkpoint's hyper-parameters with those cleared and the architecture they produced filled in
(`architecture_hparams`), in one place at save time: the file reloads alone, on any machine.

`load_module(cls, path)` is the one loader: it reads checkpoints written before the optimiser,
KD and gate options were grouped (flat `lr`/`kd_alpha`/`gate_types`, ...) too.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from lightning import LightningModule

M = TypeVar("M", bound=LightningModule)

# Constructor arguments that only say how training starts; a saved model has already started.
START_ONLY = ("init_from", "kd", "keep_layers")

# Flat hyper-parameters of older checkpoints -> (group, field).
_LEGACY_GROUPS = {
    "lr": ("optimizer", "lr"), "betas": ("optimizer", "betas"), "weight_decay": ("optimizer", "weight_decay"),
    "teacher": ("kd", "teacher"), "kd_alpha": ("kd", "alpha"), "kd_temperature": ("kd", "temperature"),
    "kd_hidden_weight": ("kd", "hidden_weight"), "kd_cache": ("kd", "cache"),
    "gate_types": ("gates", "types"), "l0_lambda": ("gates", "l0_lambda"), "gate_lr": ("gates", "lr"),
}


def upgrade_hparams(hparams: dict[str, Any], extra_groups: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """Hyper-parameters of an older checkpoint in today's grouped form (others unchanged).

    Flat optimiser keys become `optimizer: {name, lr, ...}`; `kd_*` keys become `kd` (None without a
    teacher); `gate_*` / `l0_lambda` become `gates` (None without gate types); a module's own
    `extra_groups` (flat key -> (group, field)) likewise.
    """
    legacy = {**_LEGACY_GROUPS, **(extra_groups or {})}
    if not any(k in hparams for k in legacy) and not isinstance(hparams.get("optimizer"), str):
        return dict(hparams)
    out: dict[str, Any] = {k: v for k, v in hparams.items() if k not in legacy}
    groups: dict[str, dict[str, Any]] = {}
    for key, (group, field) in legacy.items():
        if key in hparams:
            groups.setdefault(group, {})[field] = hparams[key]
    optimizer = groups.get("optimizer", {})
    if isinstance(hparams.get("optimizer"), str):
        optimizer["name"] = hparams["optimizer"]
    if optimizer:
        optimizer.setdefault("name", "adamw")
        optimizer["betas"] = list(optimizer.get("betas", (0.9, 0.999)))
        out["optimizer"] = optimizer
    kd = groups.get("kd", {})
    out["kd"] = {k: v for k, v in kd.items() if v is not None} if kd.get("teacher") else None
    gates = groups.get("gates", {})
    out["gates"] = gates if gates.get("types") else None
    for group, fields in groups.items():
        if group not in ("optimizer", "kd", "gates"):
            out[group] = fields
    return out


def peek_hparams(path: str | Path) -> dict[str, Any]:
    """The hyper-parameters of a checkpoint without reading its tensors (memory-mapped)."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # pickle / zip errors of every kind
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return dict(ckpt.get("hyper_parameters") or {})


def load_module(cls: type[M], path: str | Path, map_location: str | None = "cpu", **overrides: Any) -> M:
    """`cls.load_from_checkpoint(path)`, older checkpoints' hyper-parameters upgraded, `overrides` applied."""
    saved = peek_hparams(path)
    upgraded = upgrade_hparams(saved, getattr(cls, "legacy_hparams", None))
    changed = {k: v for k, v in upgraded.items() if k not in saved or saved[k] is not v}
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=False, **changed, **overrides)


class ResolvedConfig:
    """Mixin for LightningModules: `resolved_hparams()` is what a checkpoint stores as hyper-parameters."""

    # The module's own flat hyper-parameters of older checkpoints -> (group, field), for `load_module`.
    legacy_hparams: ClassVar[dict[str, tuple[str, str]]] = {}

    def architecture_hparams(self) -> dict[str, Any]:
        """Hyper-parameters that rebuild the network as it is now (e.g. the BERT config of a pretrained
        folder after `keep_layers`); overridden by modules whose start options change the architecture."""
        return {}

    def resolved_hparams(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model from its checkpoint alone, as plain data (config
        dataclasses as dicts: the checkpoint holds no pickled config classes)."""
        hparams = dict(self.hparams)  # type: ignore[attr-defined]
        hparams.update({key: None for key in START_ONLY if key in hparams})
        hparams.update(self.architecture_hparams())
        return {k: asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for k, v in hparams.items()}
