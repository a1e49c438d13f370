"""Batched greedy and beam search for `Seq2SeqTransformer` with key/value caches.

The encoder runs once; the decoder runs one position per step and gets only the newest
token (`offset` = step index), its self-attention caches growing in place. Sentences that
are done leave the batch, so one long sentence does not keep short ones decoding.

A sentence may produce at most `floor(max_len_a * src_len + max_len_b)` tokens (src_len
without padding), capped by the model's `cfg.max_len`; a hypothesis that reaches that
length without EOS is returned as it stands. PAD and BOS are never generated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration of a search, then the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _length_limits(model: nn.Module, src: Tensor, a: float, b: int) -> list[int]:
    """Per-sentence maximum number of output tokens."""
    lengths = (src != model.cfg.pad_id).sum(dim=1).tolist()
    return [max(0, min(int(a * n + b), model.cfg.max_len)) for n in lengths]


def _log_probs(model: nn.Module, logits: Tensor) -> Tensor:
    """Last-position log-probabilities (rows, V) in float32, PAD and BOS excluded."""
    logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
    logp[:, model.cfg.pad_id] = -math.inf
    logp[:, model.cfg.bos_id] = -math.inf
    return logp


def _select_cache(cache: list[dict], rows: Tensor, cross: bool) -> None:
    """Keep/reorder the batch rows of every layer's self (and optionally cross) cache in place."""
    for layer in cache:
        for kind in ("self", "cross") if cross else ("self",):
            for key, value in layer.get(kind, {}).items():
                layer[kind][key] = value.index_select(0, rows)


def _strip(model: nn.Module, ids: list[int]) -> list[int]:
    """Token ids without BOS/EOS/PAD."""
    cfg = model.cfg
    return [i for i in ids if i not in (cfg.pad_id, cfg.bos_id, cfg.eos_id)]


@torch.inference_mode()
def greedy_search(
    model: nn.Module, src: Tensor, max_len_a: float = 1.2, max_len_b: int = 10
) -> list[list[int]]:
    """Greedy decoding of a padded source batch (B, S) -> B token-id lists (no BOS/EOS/PAD)."""
    cfg = model.cfg
    limits = _length_limits(model, src, max_len_a, max_len_b)
    out: list[list[int]] = [[] for _ in limits]
    with _eval_mode(model):
        memory, mask = model.encode(src)
        cache = model.new_cache()
        alive = torch.tensor([i for i, n in enumerate(limits) if n > 0], device=src.device, dtype=torch.long)
        memory, mask = memory[alive], mask[alive]
        limit = torch.tensor(limits, device=src.device)[alive]
        last = torch.full((len(alive), 1), cfg.bos_id, dtype=torch.long, device=src.device)
        gen = last[:, :0]
        step = 0
        while len(alive):
            nxt = _log_probs(model, model.decode(last, memory, mask, cache, offset=step)).argmax(dim=-1)
            gen = torch.cat([gen, nxt[:, None]], dim=1)
            step += 1
            done = (nxt == cfg.eos_id) | (limit == step)
            for r in done.nonzero().flatten().tolist():
                out[int(alive[r])] = _strip(model, gen[r].tolist())
            keep = (~done).nonzero().flatten()
            if len(keep) < len(alive):
                alive, limit, gen, nxt = alive[keep], limit[keep], gen[keep], nxt[keep]
                memory, mask = memory[keep], mask[keep]
                _select_cache(cache, keep, cross=True)
            last = nxt[:, None]
    return out


def _penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    src: Tensor,
    beam_size: int = 5,
    length_penalty: float = 0.6,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Beam search of a padded source batch (B, S) -> best hypothesis per sentence.

    Batch x beam is flattened to (B*K) rows. A finished hypothesis scores
    sum(log p) / ((5 + len) / 6) ** length_penalty, len counting its EOS. A sentence stops
    when it has K finished hypotheses and no live beam, scored at the current length, beats
    the best of them (exact for length_penalty=0, and the condition that makes
    beam_size=1 identical to greedy search), or at its maximum length, where the live
    beams are added as finished.
    """
    cfg = model.cfg
    vocab = cfg.vocab_size
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if beam_size > vocab:
        raise ValueError(f"beam_size={beam_size} is larger than the vocabulary size ({vocab})")
    k, dev = beam_size, src.device
    limits = _length_limits(model, src, max_len_a, max_len_b)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in limits]
    with _eval_mode(model):
        memory, mask = model.encode(src)
        cache = model.new_cache()
        alive = torch.tensor([i for i, n in enumerate(limits) if n > 0], device=dev, dtype=torch.long)
        limit = torch.tensor(limits, device=dev)[alive]
        rows = alive.repeat_interleave(k)  # cross-attention state expanded once to (B*K)
        memory, mask = memory[rows], mask[rows]
        scores = torch.full((len(alive), k), -math.inf, device=dev)
        scores[:, 0] = 0.0  # one live beam at the start: the others are copies of it
        last = torch.full((len(rows), 1), cfg.bos_id, dtype=torch.long, device=dev)
        gen = last[:, :0]
        step = 0
        while len(alive):
            n, sents = len(alive), alive.tolist()
            logp = _log_probs(model, model.decode(last, memory, mask, cache, offset=step))
            cand = (scores.view(-1, 1) + logp).view(n, k * vocab)
            top, idx = cand.topk(min(2 * k, k * vocab), dim=1)
            beam, tok = idx // vocab, idx % vocab
            step += 1
            lp = _penalty(step, length_penalty)
            is_eos = tok == cfg.eos_id
            # EOS candidates among the K best are finished hypotheses.
            for i, j in (is_eos[:, :k] & top[:, :k].isfinite()).nonzero().tolist():
                hyp = gen[i * k + int(beam[i, j])].tolist()
                finished[sents[i]].append((top[i, j].item() / lp, hyp))
            # The K best non-EOS candidates, in rank order, are the new live beams.
            rank = torch.arange(top.shape[1], device=dev)
            order = (is_eos.long() * top.shape[1] + rank).argsort(dim=1)[:, :k]
            scores, tok = top.gather(1, order), tok.gather(1, order)
            parent = ((torch.arange(n, device=dev) * k)[:, None] + beam.gather(1, order)).flatten()
            gen = torch.cat([gen[parent], tok.view(-1, 1)], dim=1)
            _select_cache(cache, parent, cross=False)
            last = tok.view(-1, 1)
            done = []
            for i, (row, at_limit) in enumerate(zip(scores.tolist(), (limit == step).tolist(), strict=True)):
                hyps = finished[sents[i]]
                if at_limit:  # out of length: the live beams are finished as they stand
                    hyps += [(s / lp, gen[i * k + j].tolist()) for j, s in enumerate(row) if s > -math.inf]
                done.append(at_limit or (len(hyps) >= k and max(row) / lp <= max(h[0] for h in hyps)))
            keep = (~torch.tensor(done, device=dev)).nonzero().flatten()
            if len(keep) < n:  # drop finished sentences from the batch
                keep_rows = (keep[:, None] * k + torch.arange(k, device=dev)).flatten()
                alive, limit, scores = alive[keep], limit[keep], scores[keep]
                gen, last, memory, mask = gen[keep_rows], last[keep_rows], memory[keep_rows], mask[keep_rows]
                _select_cache(cache, keep_rows, cross=True)
    return [_strip(model, max(hyps, key=lambda h: h[0])[1]) if hyps else [] for hyps in finished]
