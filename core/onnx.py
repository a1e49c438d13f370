"""ONNX export and ONNX Runtime inference for every registered task.

A task says which graphs its model is made of (`Task.onnx_graphs`: a BERT task one graph, translation an
encoder graph and a decoder-step graph with the key/value cache as inputs and outputs) and how a module runs
on them (`Task.attach_onnx`). This module does the rest, the same way for every task:

* `export_onnx(checkpoint, path)` exports each graph with `torch.onnx.export` (the `torch.export`-based
  exporter; dynamic batch and length axes), checks that ONNX Runtime opens it, and optionally writes an int8
  copy with ONNX Runtime's dynamic quantisation (`int8=True`: per-channel int8 weights of every MatMul).
* The first file carries what rebuilds the model around the graphs, so it needs nothing else: the task name,
  and a *skeleton* of the checkpoint (hyper-parameters, tokenizer / vocabulary, compression spec, and the few
  weights used outside the graphs, e.g. a CRF's transition scores) in its metadata.
* `load_onnx(path)` rebuilds the LightningModule from the skeleton and attaches ONNX Runtime sessions, so
  `ner.predict`, `nmt.translate` and STS evaluation run the exported artifact through their usual code.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.config import load_module
from core.tasks import get_task, load_task_module

SKELETON_KEY = "lab.skeleton"  # ONNX metadata: base64 torch.save of the checkpoint without its graph weights
TASK_META = "lab.task"
MIN_OPSET = 18  # the torch.export-based exporter's minimum
_TRAINING_STATE = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "MixedPrecision")


@dataclass
class OnnxGraph:
    """One graph of a task's model: `module(*args)` is traced; `dynamic_shapes` as `torch.export` takes it
    (per argument); `suffix` names its file (`model.onnx` + '' or '.decoder')."""

    module: nn.Module
    args: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple
    suffix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def graph_path(path: str | Path, suffix: str) -> Path:
    """The file of the graph with `suffix` beside the main file `path` (model.onnx -> model.decoder.onnx)."""
    path = Path(path)
    return path if not suffix else path.with_name(f"{path.stem}{suffix}{path.suffix}")


def int8_path(path: str | Path) -> Path:
    """Where the int8 copy of an exported file goes (model.onnx -> model.int8.onnx)."""
    return graph_path(path, ".int8")


def check_opset(opset: int) -> int:
    """`opset`, or one clear ValueError if the exporter or the installed onnx / ONNX Runtime lack it."""
    import onnx
    import onnxruntime

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset {opset} is not available: torch's exporter needs >= {MIN_OPSET}, the "
                         f"installed onnx {onnx.__version__} (ONNX Runtime {onnxruntime.__version__}) knows up "
                         f"to {newest}")
    return opset


def check_exportable(module: nn.Module) -> None:
    """One clear ValueError for a module that must not be exported as it is."""
    from compression.gates import attached_gates
    from compression.quantize import quantization_spec

    if attached_gates(module):
        raise ValueError("the model still has head gates attached: prune or detach the gates first "
                         "(prune_heads.py --method gates), then export")
    if (spec := quantization_spec(module)) is not None:
        raise ValueError(f"the checkpoint is already quantised ({spec.dtype}) with torch: export the float "
                         "checkpoint, and pass --int8 for ONNX Runtime's own int8")


def _skeleton(checkpoint: dict, host_prefixes: Sequence[str]) -> str:
    """The checkpoint without training state and graph weights, base64 of its `torch.save`."""
    skeleton = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    skeleton["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(tuple(host_prefixes))}
    buffer = io.BytesIO()
    torch.save(skeleton, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def export_onnx(checkpoint: str | Path, path: str | Path, opset: int = MIN_OPSET, int8: bool = False,
                task: str | None = None) -> list[Path]:
    """Export the checkpoint's model to `path` (+ sibling files for further graphs); with `int8` also
    `int8_path(...)` of each; `task` names the task of a checkpoint written before tasks were recorded.
    Returns the files written."""
    import onnx

    check_opset(opset)
    task, module = load_task_module(checkpoint, task)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    check_exportable(module)
    graphs = task.onnx_graphs(module)
    written = []
    for i, graph in enumerate(graphs):
        out = graph_path(path, graph.suffix)
        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            program = torch.onnx.export(graph.module.eval(), graph.args, input_names=graph.input_names,
                                        output_names=graph.output_names, dynamic_shapes=graph.dynamic_shapes,
                                        opset_version=opset, dynamo=True, external_data=False, verbose=False)
        proto = program.model_proto
        meta = {**graph.metadata, TASK_META: task.name}
        if i == 0:
            meta[SKELETON_KEY] = _skeleton(ckpt, task.onnx_host_prefixes)
        onnx.helper.set_metadata_props(proto, meta)
        tmp = out.with_name(out.name + ".tmp")
        onnx.save(proto, tmp)
        tmp.replace(out)  # atomic: an interrupted export leaves no half-written model
        open_session(out)
        written.append(out)
        if int8:  # model.int8.onnx, model.int8.decoder.onnx: the int8 model's graphs find each other too
            written.append(quantize_onnx(out, graph_path(int8_path(path), graph.suffix)))
    return written


def quantize_onnx(src: Path, dst: Path) -> Path:
    """ONNX Runtime dynamic int8 quantisation (per-channel weights) of `src` into `dst`, metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per MatMul it skips (attention scores)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / dst.name
            quantize_dynamic(src, staged, weight_type=QuantType.QInt8, per_channel=True)
            proto = onnx.load(staged)
    finally:
        root.setLevel(level)
    source = onnx.load(src, load_external_data=False)
    onnx.helper.set_metadata_props(proto, {p.key: p.value for p in source.metadata_props})
    onnx.save(proto, dst)
    open_session(dst)
    return dst


def open_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on `path` (threads: torch's), or one clear error naming the file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        raise ValueError(f"{path}: ONNX Runtime {onnxruntime.__version__} cannot run this file: {err}") from err


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an ONNX file (without loading its weights)."""
    import onnx

    if not Path(path).is_file():
        raise ValueError(f"ONNX model {str(path)!r} does not exist")
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


class Session:
    """An ONNX Runtime session that takes and returns torch tensors, after checking the file's inputs are the
    ones the task feeds (a clear error for an `.onnx` of another task or another export; None: the caller
    checks)."""

    def __init__(self, path: str | Path, input_names: Sequence[str] | None, what: str) -> None:
        self.path = Path(path)
        self.session = open_session(path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        if input_names is not None and list(input_names) != self.inputs:
            raise ValueError(f"{path}: its inputs {self.inputs} do not match {what}, which feeds {list(input_names)}")

    def __call__(self, *args: Tensor) -> list[Tensor]:
        """Run on `args` (in input order) and return every output as a CPU tensor."""
        feed = {name: _numpy(a) for name, a in zip(self.inputs, args, strict=True)}
        return [torch.from_numpy(np.asarray(out)) for out in self.session.run(None, feed)]


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()


def load_onnx(path: str | Path, task_name: str | None = None) -> Any:
    """The LightningModule of an exported model running on ONNX Runtime (eval mode); `task_name` checks the
    file is of that task."""
    meta = read_metadata(path)
    if SKELETON_KEY not in meta or TASK_META not in meta:
        raise ValueError(f"{path}: not the main file of a model exported by this lab (export.py); its metadata "
                         f"has {sorted(meta)}")
    task = get_task(meta[TASK_META])
    if task_name is not None and task.name != task_name:
        raise ValueError(f"{path}: an exported {task.name!r} model, expected a {task_name!r} one")
    with tempfile.TemporaryDirectory() as tmp:
        skeleton = Path(tmp) / "skeleton.ckpt"
        skeleton.write_bytes(base64.b64decode(meta[SKELETON_KEY]))
        with warnings.catch_warnings():  # the skeleton lacks the graph weights on purpose
            warnings.filterwarnings("ignore", message=".*(not in the checkpoint|contains no parameters).*")
            module = load_module(task.module_class, skeleton, strict=False).eval()
    task.attach_onnx(module, Path(path))
    return module
