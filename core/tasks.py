"""Task registry: what a task-agnostic pipeline (pruning, distillation, measurement, export) may ask of a task.

A *task* is one kind of model the lab trains (translation, tagging, sentence encoding). Each task
package implements `Task` in its own `task.py` and registers it with `@register_task`, in the
spirit of timm's `register_model`:

    @register_task
    class TranslationTask(Task):
        name = "nmt"
        module_class = TranslationModule
        ...

Every checkpoint records its task under `checkpoint["task"]` (`TASK_KEY`), so
`load_task_module(path)` opens any checkpoint with the right LightningModule, and `get_task(name)`
finds a task not yet imported by importing `<name>.task`. Neither `core/` nor `compression/`
imports a task package: a fourth task is a new package with a `task.py`, no edit here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning import LightningModule
from torch import Tensor, nn

from core.config import load_module

TASK_KEY = "task"
_REGISTRY: dict[str, Task] = {}


@dataclass(frozen=True)
class EvalOptions:
    """Settings of a quality measurement that some tasks read (NMT: beam size); the rest ignore them."""

    beam_size: int = 5
    batch_size: int = 32


class Task:
    """One task: how to load its checkpoints, feed and score its model, and measure it.

    Subclasses set `name`, `module_class`, `score_files` and `eval_files` (what the files passed to
    `scoring_batches` / `quality` are, for error messages) and implement the methods below.
    """

    name: ClassVar[str]
    module_class: ClassVar[type[LightningModule]]
    score_files: ClassVar[tuple[str, ...]] = ()
    eval_files: ClassVar[tuple[str, ...]] = ()
    # Hyper-parameters that do not shape the weights (optimiser, KD, decoding, data paths): checkpoints
    # that differ only there may be averaged (`core.averaging`).
    training_only_hparams: ClassVar[frozenset[str]] = frozenset()
    # Checkpoint entries besides the state dict that must be equal for checkpoints to be averaged.
    same_entries: ClassVar[tuple[str, ...]] = ()
    # State-dict prefixes of weights used outside the exported ONNX graphs (kept in the file's metadata).
    onnx_host_prefixes: ClassVar[tuple[str, ...]] = ()

    def load(self, path: str | Path) -> LightningModule:
        """The checkpoint's module on CPU in eval mode, rebuilt from the file alone (teacher not loaded); an
        `.onnx` file exported by `core.onnx` gives the module running on ONNX Runtime."""
        if Path(path).suffix == ".onnx":
            from core.onnx import load_onnx  # onnx / onnxruntime only when an exported model is used

            return load_onnx(path, self.name)
        return load_module(self.module_class, path).eval()

    def onnx_graphs(self, module: LightningModule) -> list:
        """The `core.onnx.OnnxGraph`s the module's model is exported as (the first one's file is the model)."""
        raise NotImplementedError(f"task {self.name!r} has no ONNX export")

    def attach_onnx(self, module: LightningModule, path: Path) -> None:
        """Make `module` (rebuilt from the exported skeleton) run its graphs from `path` on ONNX Runtime."""
        raise NotImplementedError(f"task {self.name!r} has no ONNX export")

    def network(self, module: LightningModule) -> nn.Module:
        """The network whose heads, FFNs and layers compression changes."""
        return module.compressible_network()

    def scoring_batches(self, module: LightningModule, files: Sequence[Path], limit: int,
                        batch_size: int) -> list[dict]:
        """Batches of the first `limit` examples of `files` on which `loss` scores heads and neurons."""
        raise NotImplementedError

    def loss(self, module: LightningModule, batch: dict) -> Tensor:
        """The supervised loss of `module` on one scoring batch (gradients flow to head masks)."""
        raise NotImplementedError

    def quality(self, module: LightningModule, files: Sequence[Path], options: EvalOptions) -> dict:
        """Quality of `module` on `files` ({"bleu", "chrf", ...}, {"f1", ...}, {"spearman"})."""
        raise NotImplementedError

    def timed_network(self, module: LightningModule) -> nn.Module:
        """What latency and FLOPs measure: the network `example_inputs` feed."""
        return module

    def example_inputs(self, module: LightningModule, batch_size: int, seq_len: int, seed: int) -> tuple:
        """Seeded random positional inputs of `timed_network` for one batch (latency, FLOPs, export)."""
        raise NotImplementedError

    def count_tokens(self, inputs: tuple) -> int:
        """Tokens in one batch of `example_inputs` (FLOPs are reported per token)."""
        return inputs[0].numel()

    def check_files(self, files: Sequence[str | Path] | None, kinds: tuple[str, ...], why: str) -> list[Path]:
        """`files` as paths when there is one per expected kind and each exists, else one clear ValueError."""
        files = list(files or [])
        if len(files) != len(kinds):
            raise ValueError(f"{why} of a {self.name!r} checkpoint needs {len(kinds)} file(s): "
                             f"{', '.join(kinds)}; got {len(files)} ({[str(f) for f in files]})")
        for kind, path in zip(kinds, files, strict=True):
            if not Path(path).is_file():
                raise ValueError(f"{why}: {kind} {str(path)!r} does not exist")
        return [Path(f) for f in files]


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make the task known by its `name` (a second, different class of that name is an error)."""
    known = _REGISTRY.get(cls.name)
    if known is not None and type(known).__qualname__ != cls.__qualname__:
        raise ValueError(f"task {cls.name!r} is registered twice ({type(known).__qualname__} and {cls.__qualname__})")
    _REGISTRY[cls.name] = cls()
    return cls


def registered_tasks() -> list[str]:
    """Names of the tasks registered so far, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task `name`; imports `<name>.task` first if it is not registered yet."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"{name}.task")
        except ModuleNotFoundError as err:
            if err.name not in (name, f"{name}.task"):
                raise
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}: registered tasks are {registered_tasks()} (a task registers "
                         "itself with @register_task in its package's task.py)")
    return _REGISTRY[name]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint file as a dict on CPU; one clear ValueError if it is missing or not one."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle / zip errors of every kind
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def task_of(path: str | Path, task: str | None = None) -> Task:
    """The task of the checkpoint at `path`: `task` if given, else the name the checkpoint records."""
    name = task or read_checkpoint(path).get(TASK_KEY)
    if name is None:
        raise ValueError(f"checkpoint {str(path)!r} records no task (written before tasks were recorded): "
                         f"name it, e.g. --task nmt (registered: {registered_tasks()})")
    return get_task(name)


def load_task_module(path: str | Path, task: str | None = None) -> tuple[Task, LightningModule]:
    """(task, module in eval mode on CPU) for any task's checkpoint; `task` names it for older files."""
    found = task_of(path, task)
    return found, found.load(path)
