"""Checkpoint averaging ("model soup"): the weighted mean of several Lightning checkpoints.

Like fairseq's `scripts/average_checkpoints.py` and the uniform soup of Wortsman et al. 2022
("Model soups"): average the last epochs of one run, or several fine-tunes of one model.
Works for any task's module because it only touches
`checkpoint["state_dict"]`; the result is the first file's checkpoint dict (hyper-parameters,
vocabulary / tokenizer, compression spec, ...) with that state dict replaced, plus an
`averaged_from` record, so it reloads with the module's `load_from_checkpoint` alone.

Floating-point tensors are averaged (in float64, cast back to their dtype); integer and bool
buffers must be equal in every file and are copied. The files must describe the same model:

* the same state-dict keys and tensor shapes;
* the same task, compression spec (which heads / neurons were kept) and the task's
  `same_entries` (`core.tasks.Task`: e.g. a SentencePiece vocabulary, a tokenizer);
* the same `hyper_parameters`, compared key by key at any depth (e.g. `data_spec.labels`,
  `arch.num_heads`; a missing key equals None), except keys that do not shape the weights:
  the task's `training_only_hparams` (optimiser, KD, decoding, data-path and input-windowing settings,
  and switches whose effect the state-dict keys already show; a checkpoint recording no task compares
  them all),
  any name containing "dropout" and LightningCLI's `_`-prefixed bookkeeping.

Files are loaded with `weights_only=False` (Lightning stores hyper-parameters as Python
objects): average only checkpoints you trust.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.tasks import TASK_KEY, get_task

SAME_ENTRIES = ("compression", TASK_KEY)


def architecture_hparams(hparams: Any, training_only: frozenset[str] = frozenset(), prefix: str = "") -> dict[str, Any]:
    """`hparams` flattened to {"a.b": value}, without the `training_only` keys (see module docstring)."""
    if dataclasses.is_dataclass(hparams) and not isinstance(hparams, type):
        hparams = dataclasses.asdict(hparams)
    if not isinstance(hparams, Mapping):
        return {prefix.rstrip("."): hparams}
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        # "_class_path" / "_instantiator": LightningCLI bookkeeping, present or not by how a run started
        if str(key) in training_only or "dropout" in str(key) or str(key).startswith("_"):
            continue
        flat.update(architecture_hparams(value, training_only, f"{prefix}{key}."))
    return flat


def _short(items: Sequence[str], limit: int = 8) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint loaded onto the CPU; ValueError naming `path` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle / zip errors of every kind
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def check_compatible(ref: dict, ref_path: str | Path, ckpt: dict, path: str | Path) -> None:
    """ValueError naming `path` if `ckpt` does not describe the same model as `ref` (see module docstring)."""
    a, b = ref["state_dict"], ckpt["state_dict"]
    if a.keys() != b.keys():
        only_ref, only_new = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"{path}: state_dict keys differ from {ref_path}: only in {ref_path}: "
                         f"[{_short(only_ref)}]; only in {path}: [{_short(only_new)}]")
    for key, tensor in a.items():
        shape_a, shape_b = tuple(getattr(tensor, "shape", ())), tuple(getattr(b[key], "shape", ()))
        if shape_a != shape_b:
            raise ValueError(f"{path}: tensor {key!r} has shape {shape_b}, but {shape_a} in {ref_path}")
    task = get_task(ref[TASK_KEY]) if ref.get(TASK_KEY) else None
    entries = SAME_ENTRIES + (task.same_entries if task else ())
    differ = [name for name in entries if ref.get(name) != ckpt.get(name)]
    if differ:
        raise ValueError(f"{path}: checkpoint entries {differ} differ from {ref_path} (not the same model)")
    training_only = task.training_only_hparams if task else frozenset()
    hp_a = architecture_hparams(ref.get("hyper_parameters") or {}, training_only)
    hp_b = architecture_hparams(ckpt.get("hyper_parameters") or {}, training_only)
    # a key absent from one file equals None (the default) in the other, e.g. hparams added later
    diff = [f"{k}: {hp_a.get(k)!r} vs {hp_b.get(k)!r}"
            for k in sorted(set(hp_a) | set(hp_b)) if hp_a.get(k) != hp_b.get(k)]
    if diff:
        raise ValueError(f"{path}: hyper_parameters differ from {ref_path} ({ref_path} vs {path}): {_short(diff, 4)}")


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """`weights` (default uniform) checked to be `n` positive finite numbers, scaled to sum 1."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} checkpoints")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"weights must be positive finite numbers, got {weights}")
    return [w / sum(weights) for w in weights]


def average_checkpoints(paths: Sequence[str | Path], weights: Sequence[float] | None = None) -> dict:
    """The first checkpoint's dict with `state_dict` replaced by the weighted mean over `paths`.

    Weights default to uniform and are normalised. Files are loaded one at a time (memory: the
    first checkpoint, a float64 accumulator and one more checkpoint). Raises ValueError naming
    the offending file for fewer than 2 paths, a missing or non-Lightning file, or files that do
    not describe the same model (see the module docstring).
    """
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least 2 checkpoints, got {len(paths)}")
    weights = normalised_weights(weights, len(paths))
    ref = load_checkpoint(paths[0])
    state = ref["state_dict"]
    total = {k: v.to(torch.float64) * weights[0] for k, v in state.items() if _is_float(v)}
    for path, weight in zip(paths[1:], weights[1:], strict=True):
        ckpt = load_checkpoint(path)
        check_compatible(ref, paths[0], ckpt, path)
        for key, value in ckpt["state_dict"].items():
            if _is_float(value):
                total[key] += value.to(torch.float64) * weight
            elif not _same(state[key], value):
                raise ValueError(f"{path}: non-float entry {key!r} differs from {paths[0]} (integer/bool "
                                 "buffers are copied, not averaged, so they must be equal)")
        del ckpt
    ref["state_dict"] = type(state)((k, total[k].to(v.dtype) if k in total else v) for k, v in state.items())
    ref["averaged_from"] = {"paths": [str(p) for p in paths], "weights": weights}
    return ref


def greedy_soup(ingredients: Sequence[str | Path], held_out_score: Callable[[Sequence[str | Path]], float],
                ingredient_scores: Sequence[float]) -> tuple[list[str | Path], list[dict]]:
    """The greedy soup of Wortsman et al. 2022 (Recipe 1): take the ingredients best-first by their own
    held-out score, and keep each one whose addition to the uniform soup does not lower the held-out score.

    `held_out_score(paths)` scores the uniform average of `paths` (two or more) on held-out data, never
    the test set; `ingredient_scores` are the ingredients' own scores on the same data. Returns the kept
    paths and one record per tried addition (`{"paths", "score", "kept"}`).
    """
    if len(ingredients) != len(ingredient_scores) or not ingredients:
        raise ValueError(f"got {len(ingredients)} ingredients and {len(ingredient_scores)} scores")
    order = sorted(range(len(ingredients)), key=lambda i: -ingredient_scores[i])
    soup, best = [ingredients[order[0]]], ingredient_scores[order[0]]
    trials = []
    for i in order[1:]:
        candidate = [*soup, ingredients[i]]
        score = held_out_score(candidate)
        kept = score >= best
        trials.append({"paths": [str(p) for p in candidate], "score": score, "kept": kept})
        if kept:
            soup, best = candidate, score
    return soup, trials


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and not isinstance(a, torch.Tensor) and a == b
