"""One measurement layer for every pipeline and benchmark: parameters, FLOPs per token and latency.

Parameters are counted once per distinct tensor (a tied output projection that reuses the
embedding matrix is not counted twice). "Embedding" parameters are those of `nn.Embedding`
and `FactorizedEmbedding` modules; everything else is "non-embedding". FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` over one forward pass (matmuls, attention; not
element-wise ops) divided by the number of tokens. Torch does not count the CPU fused attention
kernel, so it is added with torch's own SDPA formula (4*B*H*T*S*Dh, masks ignored).

Latency is timed with `torch.utils.benchmark.Timer` (which pins the thread count it records) and
always *side by side*: every repeat runs each model once, in an order rotated from repeat to repeat,
so machine noise hits every model alike and a speed-up is a ratio of medians measured together.
A `Latency` result knows which batch sizes it measured: asking it for another one is an error,
never a silently relabelled figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from compression.factorize import FactorizedEmbedding

Inputs = tuple | dict


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"total", "embedding", "non_embedding"}, tied weights counted once."""
    params = {id(p): p for p in model.parameters()}
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding | FactorizedEmbedding) for p in m.parameters()
    }
    total = sum(p.numel() for p in params.values())
    embedding = sum(p.numel() for i, p in params.items() if i in embedding_ids)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def call(model: Callable, inputs: Inputs) -> Any:
    """`model(**inputs)` for a dict of keyword inputs, else `model(*inputs)`."""
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def default_token_count(inputs: Inputs) -> int:
    """Number of tokens: elements of the first integer tensor among the inputs (e.g. (B, T) ids)."""
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for v in values:
        if isinstance(v, Tensor) and not v.is_floating_point() and v.dtype != torch.bool:
            return v.numel()
    raise ValueError("no integer id tensor among the inputs; pass count_tokens")


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
CUSTOM_FLOPS = {_CPU_SDPA: _sdpa_flop} if _CPU_SDPA is not None else {}


def flops_per_token(model: nn.Module, inputs: Inputs, count_tokens: Callable[[Inputs], int] = default_token_count
                    ) -> float:
    """FLOPs of one forward on `inputs` (no gradients), divided by the number of tokens."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        call(model, inputs)
    return counter.get_total_flops() / count_tokens(inputs)


def time_alternating(calls: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call over `repeats` rounds (after `warmup` untimed rounds); every round runs every
    call once, the order rotated by one from round to round so no call always goes first."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    timers = {name: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
              for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(warmup + repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            seconds = timers[name].timeit(1).times[0]
            if i >= warmup:
                times[name].append(seconds)
    return times


@dataclass
class Latency:
    """Median milliseconds per model and batch size, measured side by side, and how."""

    ms: dict[str, dict[int, float]]
    repeats: int
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes measured."""
        return sorted(next(iter(self.ms.values()))) if self.ms else []

    def at(self, name: str, batch_size: int) -> float:
        """Median ms of `name` at `batch_size`; a KeyError naming what was measured otherwise."""
        if batch_size not in self.ms.get(name, {}):
            raise KeyError(f"{name!r} at batch {batch_size} was not measured (models {list(self.ms)}, "
                           f"batch sizes {self.batch_sizes})")
        return self.ms[name][batch_size]

    def speedup(self, name: str, baseline: str, batch_size: int) -> float:
        """How many times faster `name` runs than `baseline` at `batch_size` (ratio of medians)."""
        return self.at(baseline, batch_size) / self.at(name, batch_size)

    def to_dict(self) -> dict:
        """JSON-able: {"ms": {name: {"B": ms}}, "repeats", "threads"}."""
        return {"ms": {n: {str(b): v for b, v in per.items()} for n, per in self.ms.items()},
                "repeats": self.repeats, "threads": self.threads}


def latency(models: Mapping[str, Callable], inputs: Mapping[int, Inputs], repeats: int = 10,
            warmup: int = 2) -> Latency:
    """Median forward milliseconds of every model at every batch size of `inputs` ({B: inputs}), side by side,
    in eval mode under `torch.inference_mode` (training flags restored after)."""
    modules = [m for m in models.values() if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    ms: dict[str, dict[int, float]] = {name: {} for name in models}
    try:
        with torch.inference_mode():
            for b, batch in inputs.items():
                calls = {name: partial(call, model, batch) for name, model in models.items()}
                for name, seconds in time_alternating(calls, repeats, warmup).items():
                    ms[name][int(b)] = 1000 * statistics.median(seconds)
    finally:
        for m, flag in zip(modules, was_training, strict=True):
            m.train(flag)
    return Latency(ms, repeats)


def size_report(
    model: nn.Module, example_inputs_fn: Callable[[int], Inputs], batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 10, warmup: int = 2, count_tokens: Callable[[Inputs], int] = default_token_count,
) -> dict:
    """Parameters, FLOPs per token and CPU latency of one model.

    `example_inputs_fn(batch_size)` returns the forward's positional (tuple) or keyword (dict) inputs;
    FLOPs are measured at the first batch size. Returns {"params": {...}, "flops_per_token",
    "latency_ms": {B: ms}, "items_per_s": {B: batch / median seconds}, "threads", "repeats"}.
    """
    if not batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    was_training = model.training
    model.eval()
    try:
        flops = flops_per_token(model, example_inputs_fn(batch_sizes[0]), count_tokens)
        timed = latency({"model": model}, {int(b): example_inputs_fn(b) for b in batch_sizes}, repeats, warmup)
    finally:
        model.train(was_training)
    ms = timed.ms["model"]
    return {"params": parameter_counts(model), "flops_per_token": flops, "latency_ms": ms,
            "items_per_s": {b: b / (v / 1000) for b, v in ms.items()}, "threads": timed.threads, "repeats": repeats}
