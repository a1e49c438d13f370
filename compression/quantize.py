"""Post-training quantisation as model surgery: `module -> int8 module` and `module -> bf16 module`.

int8 is *dynamic* quantisation of linear layers (weights int8 per output channel, activations quantised
on the fly per batch) through `torch.ao.quantization.quantize_dynamic`. Why torch.ao and not torchao:
on the pinned CPU torch it is part of torch itself (no extra package that could pull another torch), its
x86 backend (fbgemm / oneDNN) uses this CPU's AVX-512 VNNI int8 dot products, and dynamic quantisation
needs no calibration data, so it applies to any task's model the same way. torchao's
`Int8DynamicActivationInt8WeightConfig` gets its speed from `torch.compile`, which the lab's eager
inference and beam search do not use; the measured int8 speed-ups are `benchmarks.deploy.run`'s. torch
deprecates its quantised tensors in favour of torchao (pytorch issue 184982); the warning is silenced here
and the day it matters, only `_quantize_int8` changes. bf16 casts the whole module (weights and
activations; this CPU has AVX-512 BF16). Search and losses already compute scores in fp32.

What is quantised:
* every `nn.Linear` of the module (attention projections, FFNs, task heads) except names matching an
  `exclude` pattern (`fnmatch`, e.g. "*.ffn.fc2" or "head"): the per-module exclusion list, which
  `sensitivity_scan` helps to choose;
* an SVD-factorised linear (`compression.factorize.FactorizedLinear`) as its two thin linears;
* pruned attention (uneven heads per layer) and pruned FFNs quantise like any linear: their projections
  are plain, smaller `nn.Linear`s.
Embeddings stay fp32 under int8. A tied output projection (the NMT model's, `untie_output_projection`) gets an
own copy of the embedding matrix as a linear first, quantised like the others unless excluded: it is the largest
matrix product of a decoder step.

The recipe is recorded on the module (`quantization_spec`) and stored in its checkpoint by
`compression.spec.CompressionHooks`, which re-applies it to a fresh module before the state dict loads:
a quantised checkpoint reloads from the file alone and predicts identically.
"""

from __future__ import annotations

import fnmatch
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from compression.factorize import FactorizedLinear
from compression.gates import attached_gates

QUANT_KEY = "quantization"  # checkpoint entry
_SPEC_ATTR = "_quantization_spec"
DTYPES = ("int8", "bf16")


@dataclass(frozen=True)
class QuantizationSpec:
    """`dtype` 'int8' (dynamic, linear layers) or 'bf16' (the whole module); `exclude`: fnmatch patterns of
    linear-layer names kept in fp32 under int8."""

    dtype: Literal["int8", "bf16"] = "int8"
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"quantisation dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))


def quantization_spec(module: nn.Module) -> QuantizationSpec | None:
    """The recipe `quantize` applied to `module`, or None for a float module."""
    return module.__dict__.get(_SPEC_ATTR)


def check_backend(supported: Sequence[str] | None = None) -> str:
    """The quantised engine int8 runs on (x86 / fbgemm / onednn), or one clear RuntimeError if this torch build
    (or `supported`, the engines to assume) has none."""
    supported = list(torch.backends.quantized.supported_engines if supported is None else supported)
    engines = [e for e in ("x86", "fbgemm", "onednn") if e in supported]
    if not engines:
        raise RuntimeError(f"int8 quantisation needs an x86 quantised engine (x86, fbgemm or onednn); this torch "
                           f"build has {supported}")
    if torch.backends.quantized.engine not in engines:
        torch.backends.quantized.engine = engines[0]
    return torch.backends.quantized.engine


def _split_factorized(module: nn.Module) -> None:
    """Each FactorizedLinear (x -> U (V x) + b) as a `LinearPair` (Linear(V), Linear(U, b)): the same
    function, made of plain linears that dynamic quantisation understands."""
    for name, child in list(module.named_children()):
        if isinstance(child, FactorizedLinear):
            setattr(module, name, child.as_linear_pair())
        else:
            _split_factorized(child)


def _as_linears(module: nn.Module, exclude: Sequence[str] = ()) -> nn.Module:
    """`module` (changed in place) with factorised linears split and tied output projections untied, unless
    excluded: the linears int8 quantises."""
    _split_factorized(module)
    for name, child in list(module.named_modules()):
        projection = f"{name}.output_projection" if name else "output_projection"
        if hasattr(child, "untie_output_projection") and not any(
                fnmatch.fnmatchcase(projection, pattern) for pattern in exclude):
            child.untie_output_projection()
    return module


def linear_names(module: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the `nn.Linear` layers of `module` that no `exclude` pattern matches."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)
            and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)]


def quantize(module: nn.Module, dtype: str = "int8", exclude: Sequence[str] = ()) -> nn.Module:
    """`module` quantised in place (and returned), in eval mode; see the module docstring.

    Errors: a module already quantised, one with head gates still attached ("prune or detach the gates
    first"), an unknown dtype, an int8 backend missing from this torch build.
    """
    spec = QuantizationSpec(dtype, tuple(exclude))  # type: ignore[arg-type]
    if (done := quantization_spec(module)) is not None:
        raise ValueError(f"the model is already quantised ({done.dtype}); quantise the float checkpoint instead")
    if attached_gates(module):
        raise ValueError("the model still has head gates attached: prune or detach the gates first "
                         "(prune_heads.py --method gates), then quantise")
    module.eval()
    if spec.dtype == "bf16":
        module.to(torch.bfloat16)
    else:
        _quantize_int8(module, spec.exclude)
    module.__dict__[_SPEC_ATTR] = spec
    return module


def _quantize_int8(module: nn.Module, exclude: Sequence[str]) -> None:
    check_backend()
    _as_linears(module, exclude)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    targets = {name: qconfig for name in linear_names(module, exclude)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        torch.ao.quantization.quantize_dynamic(module, targets, dtype=torch.qint8, inplace=True)


def save_quantization(module: nn.Module, checkpoint: dict) -> None:
    """Record the module's quantisation recipe in `checkpoint` (nothing for a float module)."""
    if (spec := quantization_spec(module)) is not None:
        checkpoint[QUANT_KEY] = {**asdict(spec), "exclude": list(spec.exclude)}


def load_quantization(module: nn.Module, checkpoint: dict) -> None:
    """Quantise a fresh float module like the checkpoint's, so its state dict loads key for key."""
    if (entry := checkpoint.get(QUANT_KEY)) and quantization_spec(module) is None:
        quantize(module, entry["dtype"], entry.get("exclude", ()))


def serialized_bytes(module: nn.Module) -> int:
    """Bytes of the module's state dict as `torch.save` writes it (packed int8 weights included)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def module_type(name: str) -> str:
    """A linear layer's type: its name with layer indices as '*' (e.g. 'encoder.*.self_attn.qkv_proj')."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def sensitivity_scan(
    fresh: Callable[[], nn.Module], evaluate: Callable[[nn.Module], float], dtype: str = "int8",
    within: str | None = None,
) -> list[dict]:
    """Quantise one linear-layer type at a time and report the quality change.

    `fresh()` builds a new float copy of the model, `evaluate(model)` returns its quality (higher is
    better). Rows: {"type", "layers", "quality", "change"} per type, after a first row for the float
    model ("none") and a last for every type quantised ("all"), so a user sees which types to `exclude`.
    With `within` (a type, e.g. "bert.layers.*.ffn.fc2") the rows are that type's single layers instead
    ("all" then quantises the whole type): which one layer of a sensitive type to keep in fp32.
    """
    base_model = fresh()
    base = evaluate(base_model)
    names = linear_names(_as_linears(base_model))
    if within is not None:
        names = [n for n in names if module_type(n) == within]
        if not names:
            raise ValueError(f"no linear layer of type {within!r} in the model")
    types = sorted({module_type(n) if within is None else n for n in names})
    # Per layer: every other linear type stays float throughout.
    outside = [] if within is None else sorted({module_type(n) for n in linear_names(base_model)} - {within})
    rows = [{"type": "none", "layers": 0, "quality": base, "change": 0.0}]
    for kind in types:
        model = quantize(fresh(), dtype, exclude=[t for t in types if t != kind] + outside)
        quality = evaluate(model)
        rows.append({"type": kind, "layers": sum(fnmatch.fnmatchcase(n, kind) for n in names), "quality": quality,
                     "change": quality - base})
    quality = evaluate(quantize(fresh(), dtype, exclude=outside))
    rows.append({"type": "all", "layers": len(names), "quality": quality, "change": quality - base})
    return rows
