"""Size report for any model: parameters, FLOPs per token and CPU latency.

Parameters are counted once per distinct tensor (a tied output projection that reuses the
embedding matrix is not counted twice). "Embedding" parameters are those of `nn.Embedding`
and `FactorizedEmbedding` modules (token, position, token-type tables and the factorised
projection); everything else is "non-embedding". FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` over one forward pass (matmuls, attention; not
element-wise ops) divided by the number of input tokens. Torch does not count the CPU fused
attention kernel, so it is added here with torch's own SDPA formula (4*B*H*T*S*Dh, masks ignored).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
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


def _call(model: nn.Module, inputs: Inputs) -> Any:
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
    """FLOPs of one eval-mode forward on `inputs`, divided by the number of tokens."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        _call(model, inputs)
    return counter.get_total_flops() / count_tokens(inputs)


def latency_ms(model: nn.Module, inputs: Inputs, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of one eval-mode forward (no gradients)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            _call(model, inputs)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def size_report(
    model: nn.Module, example_inputs_fn: Callable[[int], Inputs], batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 10, warmup: int = 2, count_tokens: Callable[[Inputs], int] = default_token_count,
) -> dict:
    """Parameters, FLOPs per token and CPU latency of `model`.

    `example_inputs_fn(batch_size)` returns the forward's positional args (tuple) or keyword
    args (dict); tokens are counted by `count_tokens` (default: the first integer tensor, e.g.
    BERT input ids; for NMT pass one that counts what you want per token, e.g. target ids).
    FLOPs are measured at the first batch size. The model is run in eval mode and its
    training flag restored. Returns {"params": {...}, "flops_per_token", "latency_ms": {bs: ms},
    "items_per_s": {bs: batch / median seconds}}.
    """
    if not batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    was_training = model.training
    model.eval()
    try:
        flops = flops_per_token(model, example_inputs_fn(batch_sizes[0]), count_tokens)
        latency = {int(b): latency_ms(model, example_inputs_fn(b), repeats, warmup) for b in batch_sizes}
    finally:
        model.train(was_training)
    return {
        "params": parameter_counts(model),
        "flops_per_token": flops,
        "latency_ms": latency,
        "items_per_s": {b: b / (ms / 1000) for b, ms in latency.items()},
    }
