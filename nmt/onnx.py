"""The translation model as two ONNX graphs, and beam search on ONNX Runtime.

* **encoder** `src (B, S) -> memory_kv (B, S, C), memory_mask (B, 1, 1, S)`: the encoder, then every decoder
  layer's cross-attention keys/values of the memory, computed once and concatenated on the last axis;
* **decoder step** `tokens (N, 1), memory_mask, memory_kv, past_key_i / past_value_i (N, H_i, T, Dh) ->
  logits (N, V), key_i / value_i (N, H_i, T+1, Dh)`: one incremental step with the self-attention cache of
  every decoder layer as inputs and outputs (H_i differs per layer after head pruning; T = 0 at the start).

`OnnxSeq2Seq` runs the two sessions behind the interface `nmt.search` uses (`cfg`, `encode`, `decode`,
`new_cache`), so greedy and beam search are the same code on PyTorch and on ONNX Runtime: hypotheses are
compared, not re-implemented.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from core.onnx import OnnxGraph, Session, graph_path
from nmt.model import Seq2SeqTransformer

DECODER_SUFFIX = ".decoder"


def _self_layers(model: Seq2SeqTransformer) -> list[int]:
    """Decoder layers whose self-attention has heads (they hold a cache)."""
    return [i for i, layer in enumerate(model.decoder) if layer.self_attn.num_heads]


class EncoderGraph(nn.Module):
    """src -> (memory_kv, memory_mask): the encoder and the cross-attention keys/values of every decoder layer."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """See the module docstring."""
        memory, mask = self.model.encode(src)
        kv = [layer.cross_attn.kv_proj(memory) for layer in self.model.decoder if layer.cross_attn.num_heads]
        return torch.cat(kv, dim=-1) if kv else memory[..., :0], mask


class DecoderStepGraph(nn.Module):
    """One decoding step with explicit caches (see the module docstring)."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model
        self.self_layers = _self_layers(model)
        if not self.self_layers:
            raise ValueError("cannot export a decoder whose self-attention heads are all pruned (no cache tells "
                             "the step its position)")

    def forward(self, tokens: Tensor, memory_mask: Tensor, memory_kv: Tensor, past: list[Tensor]) -> tuple:
        """See the module docstring; `past` is [key, value] per layer with self-attention heads."""
        caches, column = [], 0
        pasts = iter(past)
        for i, layer in enumerate(self.model.decoder):
            cache: dict = {}
            if i in self.self_layers:
                cache["self"] = {"k": next(pasts), "v": next(pasts)}
            attn = layer.cross_attn
            if attn.num_heads:
                width = 2 * attn.num_heads * attn.head_dim
                key, value = attn.split_heads(memory_kv[..., column : column + width], 2)
                cache["cross"] = {"k": key, "v": value}
                column += width
            caches.append(cache)
        offset = past[0].shape[2]
        logits = self.model.decode(tokens, None, memory_mask, caches, offset=offset)
        new = [t for i in self.self_layers for t in (caches[i]["self"]["k"], caches[i]["self"]["v"])]
        return logits[:, -1], *new


def onnx_graphs(model: Seq2SeqTransformer) -> list[OnnxGraph]:
    """The encoder and decoder-step graphs, traced on a padded batch of two with a cache of two positions."""
    cfg = model.cfg
    src = torch.full((2, 6), 5, dtype=torch.long)
    src[1, 4:] = cfg.pad_id
    src[:, 3] = cfg.eos_id
    memory_kv, mask = EncoderGraph(model)(src)
    step = DecoderStepGraph(model)
    past = []
    for i in step.self_layers:
        attn = model.decoder[i].self_attn
        # Two distinct tensors: an example input passed twice would be traced as one graph input (the value cache
        # read from the key input).
        past += [torch.randn(2, attn.num_heads, 2, attn.head_dim) for _ in ("key", "value")]
    batch, length = torch.export.Dim("batch"), torch.export.Dim("src_length", max=cfg.max_len)
    done = torch.export.Dim("past_length", min=0, max=cfg.max_len - 1)
    names = [f"past_{kind}_{i}" for i in step.self_layers for kind in ("key", "value")]
    tokens = torch.full((2, 1), cfg.bos_id, dtype=torch.long)
    return [
        OnnxGraph(EncoderGraph(model), (src,), ["src"], ["memory_kv", "memory_mask"], ({0: batch, 1: length},)),
        OnnxGraph(step, (tokens, mask, memory_kv, past), ["tokens", "memory_mask", "memory_kv", *names],
                  ["logits", *[n.removeprefix("past_") for n in names]],
                  ({0: batch}, {0: batch, 3: length}, {0: batch, 1: length}, [{0: batch, 2: done} for _ in past]),
                  suffix=DECODER_SUFFIX),
    ]


class OnnxSeq2Seq(nn.Module):
    """The `nmt.search` interface of `Seq2SeqTransformer`, run by the exported graphs on ONNX Runtime."""

    def __init__(self, cfg, path: Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Session(path, ["src"], "a translation encoder graph")
        decoder = graph_path(path, DECODER_SUFFIX)
        if not decoder.is_file():
            raise ValueError(f"{path}: its decoder-step graph {decoder} is missing (export.py writes both)")
        self.decoder = Session(decoder, None, "a translation decoder step")
        names, past = self.decoder.inputs, self.decoder.session.get_inputs()[3::2]
        if names[:3] != ["tokens", "memory_mask", "memory_kv"] or len(names) % 2 == 0 or not past \
                or not all(n.startswith(("past_key_", "past_value_")) for n in names[3:]):
            raise ValueError(f"{decoder}: its inputs {names} are not those of a translation decoder step "
                             "(tokens, memory_mask, memory_kv, past_key_i, past_value_i, ...)")
        self.layers = [(i.shape[1], i.shape[3]) for i in past]  # (heads, head_dim) of each cached layer

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Source ids -> (memory_kv, memory_mask), for `decode`."""
        memory_kv, mask = self.encoder(src)
        return memory_kv, mask

    def new_cache(self) -> list[dict]:
        """Empty self-attention caches, one per cached layer."""
        return [{} for _ in self.layers]

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, cache: list[dict] | None = None,
               offset: int = 0) -> Tensor:
        """Next-token logits (N, 1, V) for the newest tokens (N, 1); `cache` is filled like PyTorch's."""
        if cache is None or tgt_in.shape[1] != 1:
            raise ValueError("the exported decoder runs one incremental step at a time (tokens (N, 1) and a cache)")
        n = tgt_in.shape[0]
        past = []
        for (heads, dim), layer in zip(self.layers, cache, strict=True):
            own = layer.get("self", {})
            past += [own.get("k", torch.zeros(n, heads, 0, dim)), own.get("v", torch.zeros(n, heads, 0, dim))]
        logits, *new = self.decoder(tgt_in, memory_mask, memory, *past)
        for j, layer in enumerate(cache):
            layer["self"] = {"k": new[2 * j], "v": new[2 * j + 1]}
        return logits[:, None]
