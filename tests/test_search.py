"""Greedy and beam search (nmt/search.py): cached vs full decoding, agreement with uncached
unbatched reference searches, beam=1 == greedy, hand-built models where beam search must beat
greedy / keep searching / reorder its cache, a trained toy task, length limits and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from nmt.model import Seq2SeqConfig, Seq2SeqTransformer
from nmt.search import beam_search, greedy_search

PAD, BOS, EOS, FIRST = 0, 2, 3, 4  # ids below FIRST are special (1 = unk)


def tiny_model(seed: int = 0, vocab: int = 16, max_len: int = 64) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(
        vocab_size=vocab, d_model=32, num_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2,
        dropout=0.0, max_len=max_len, pad_id=PAD, bos_id=BOS, eos_id=EOS,
    )
    return Seq2SeqTransformer(cfg).eval()


def padded(seqs: list[list[int]]) -> Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def random_src(lengths: list[int], vocab: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return padded([torch.randint(FIRST, vocab, (n,), generator=g).tolist() for n in lengths])


def seq_logprob(model: Seq2SeqTransformer, src: Tensor, hyp: list[int]) -> float:
    """log p(hyp + EOS | src) by one teacher-forced forward pass without a cache."""
    tgt = torch.tensor([[BOS] + hyp + [EOS]])
    with torch.no_grad():
        logp = model(src[None], tgt[:, :-1]).log_softmax(-1)
    return logp[0].gather(1, tgt[0, 1:, None]).sum().item()


def gnmt(score: float, length: int, alpha: float) -> float:
    return score / ((5 + length) / 6) ** alpha


def test_incremental_decoding_matches_full_decoding() -> None:
    model = tiny_model(seed=1)
    src = random_src([7, 3, 11], 16, seed=1)
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(FIRST, 16, (3, 9))], dim=1)
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache, offset=t) for t in range(tgt.shape[1])]
    assert cache[0]["self"]["k"].shape[2] == tgt.shape[1]  # the cache really grew
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5


def reference_greedy(model: Seq2SeqTransformer, src: Tensor, limit: int) -> list[int]:
    """Unbatched greedy decoding without a cache: the whole prefix is re-decoded every step."""
    src = src[src != PAD][None]
    tgt = [BOS]
    with torch.no_grad():
        memory, mask = model.encode(src)
        while len(tgt) - 1 < limit:
            logits = model.decode(torch.tensor([tgt]), memory, mask)[0, -1]
            logits[[PAD, BOS]] = -math.inf
            tgt.append(int(logits.argmax()))
            if tgt[-1] == EOS:
                break
    return [t for t in tgt[1:] if t != EOS]


@pytest.mark.parametrize(("seed", "vocab"), [(2, 12), (4, 12), (6, 24)])
def test_greedy_matches_uncached_reference_and_beam_of_one(seed: int, vocab: int) -> None:
    model = tiny_model(seed=seed, vocab=vocab)
    lengths = [1, 9, 3, 17, 5, 12]
    src = random_src(lengths, vocab, seed=seed)
    greedy = greedy_search(model, src, max_len_a=1.0, max_len_b=3)
    assert greedy == [reference_greedy(model, s, n + 3) for s, n in zip(src, lengths, strict=True)]
    for alpha in (0.0, 0.6, 1.5):
        beam = beam_search(model, src, beam_size=1, length_penalty=alpha, max_len_a=1.0, max_len_b=3)
        assert beam == greedy


def reference_beam(model: Seq2SeqTransformer, src: Tensor, k: int, alpha: float, limit: int) -> list[int]:
    """Unbatched beam search without a cache, following the documented rules step by step."""
    src = src[src != PAD][None]
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []
    with torch.no_grad():
        memory, mask = model.encode(src)
        for step in range(1, limit + 1):
            cands = []
            for score, seq in beams:
                logp = model.decode(torch.tensor([[BOS] + seq]), memory, mask)[0, -1].log_softmax(-1)
                logp[[PAD, BOS]] = -math.inf
                cands += [(score + lp, seq + [v]) for v, lp in enumerate(logp.tolist()) if lp > -math.inf]
            cands = sorted(cands, key=lambda c: -c[0])[: 2 * k]
            finished += [(gnmt(s, step, alpha), q[:-1]) for s, q in cands[:k] if q[-1] == EOS]
            beams = [c for c in cands if c[1][-1] != EOS][:k]
            if step == limit:
                finished += [(gnmt(s, step, alpha), q) for s, q in beams]
            elif len(finished) < k or gnmt(beams[0][0], step, alpha) > max(finished)[0]:
                continue
            return max(finished, key=lambda f: f[0])[1]
    return []


@pytest.mark.parametrize(("seed", "vocab", "k", "alpha"), [(2, 12, 3, 0.6), (4, 12, 5, 1.0), (6, 24, 2, 0.0)])
def test_beam_search_matches_uncached_reference(seed: int, vocab: int, k: int, alpha: float) -> None:
    model = tiny_model(seed=seed, vocab=vocab)
    lengths = [1, 9, 3, 17, 5, 12]
    src = random_src(lengths, vocab, seed=seed)
    beam = beam_search(model, src, k, alpha, max_len_a=0.5, max_len_b=2)
    limits = [int(0.5 * n + 2) for n in lengths]
    assert beam == [reference_beam(model, s, k, alpha, n) for s, n in zip(src, limits, strict=True)]


GARDEN_PATH = {  # greedy takes `4` (0.55), which then ends with 0.4 * 0.95; `5` ends with 0.95
    BOS: {4: 0.55, 5: 0.45}, 4: {5: 0.4, 4: 0.3, EOS: 0.3}, 5: {EOS: 0.95, 4: 0.05},
}


class MarkovStub(nn.Module):
    """A 'model' whose next-token distribution depends on the last token only (no cache)."""

    def __init__(self, transitions: dict[int, dict[int, float]] = GARDEN_PATH) -> None:
        super().__init__()
        self.cfg = Seq2SeqConfig(vocab_size=6, pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=16)
        probs = torch.full((6, 6), 1e-9)
        for prev, nexts in transitions.items():
            for tok, p in nexts.items():
                probs[prev, tok] = p
        self.register_buffer("table", probs.log())

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        assert not self.training
        return src[:, :, None].float(), (src != PAD)[:, None, None, :]

    def decode(self, tgt_in: Tensor, memory: Tensor, mask: Tensor, cache=None, offset: int = 0) -> Tensor:
        assert not self.training and tgt_in.shape == (memory.shape[0], 1) and mask.shape[0] == memory.shape[0]
        return self.table[tgt_in]

    def new_cache(self) -> list[dict]:
        return [{}]


def test_beam_search_beats_greedy_on_a_garden_path() -> None:
    stub, src = MarkovStub(), padded([[4, 4], [5, 5, 5, 5]])
    assert greedy_search(stub, src) == [[4, 5], [4, 5]]
    assert beam_search(stub, src, beam_size=2, length_penalty=0.0) == [[5], [5]]


def test_beam_search_continues_while_a_live_beam_can_win() -> None:
    # K=2 hypotheses are finished after step 2 ([] at -1.20, [5] at -2.41), but the live beam
    # [4, 1] (-0.56) still beats them and ends as [4, 1] + EOS (-0.57).
    stub = MarkovStub({
        BOS: {4: 0.6, EOS: 0.3, 5: 0.1}, 4: {1: 0.95, EOS: 0.05}, 5: {EOS: 0.9, 4: 0.1}, 1: {EOS: 0.99},
    })
    assert beam_search(stub, padded([[4, 4, 4]]), beam_size=2, length_penalty=0.0) == [[4, 1]]


class HistoryStub(nn.Module):
    """A 'model' whose next token depends on the first generated token, which it reads from
    its key/value cache (laid out like the real one), so unreordered caches change the result.

    First token: 4 (0.55) or 5 (0.45). After a 5 the next tokens are 1 (0.99); after a 4 they
    are spread out (1: 0.5, 4: 0.25, 5: 0.25). After three tokens: EOS (0.99).
    """

    def __init__(self) -> None:
        super().__init__()
        self.cfg = Seq2SeqConfig(vocab_size=6, pad_id=PAD, bos_id=BOS, eos_id=EOS, max_len=16)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return src[:, None, :, None].float(), (src != PAD)[:, None, None, :]

    def new_cache(self) -> list[dict]:
        return [{}]

    def decode(self, tgt_in: Tensor, memory: Tensor, mask: Tensor, cache: list[dict], offset: int) -> Tensor:
        self_cache, cross_cache = cache[0].setdefault("self", {}), cache[0].setdefault("cross", {})
        cross_cache.setdefault("k", memory)
        hist = tgt_in[:, None, :, None]
        if "k" in self_cache:
            hist = torch.cat([self_cache["k"], hist], dim=2)
        self_cache["k"] = hist
        assert hist.shape[2] == offset + 1 and (hist[:, 0, 0, 0] == BOS).all()
        assert cross_cache["k"].shape[0] == mask.shape[0] == hist.shape[0]
        probs = torch.full((hist.shape[0], 6), 1e-6)
        if offset == 0:
            probs[:, 4], probs[:, 5] = 0.55, 0.45
        elif offset >= 3:
            probs[:, EOS] = 0.99
        else:
            first = hist[:, 0, 1, 0]
            probs[first == 5, 1] = 0.99
            probs[first != 5, 1], probs[first != 5, 4], probs[first != 5, 5] = 0.5, 0.25, 0.25
        return probs.log()[:, None, :]


def test_beam_search_reorders_the_cache_and_drops_finished_sentences() -> None:
    stub, src = HistoryStub(), padded([[4, 4, 4, 4, 4], [4], [4, 4, 4], [4, 4]])
    expected = [[5, 1, 1], [4], [5, 1, 1], [5, 1]]  # limits 5, 1, 3, 2 tokens
    assert beam_search(stub, src, 2, 0.0, max_len_a=1.0, max_len_b=0) == expected
    assert greedy_search(stub, src, max_len_a=1.0, max_len_b=0)[0] == [4, 1, 1]


def brute_force_best(stub: MarkovStub, limit: int, alpha: float) -> list[int]:
    """The best GNMT-normalized hypothesis of at most `limit` tokens, by enumeration."""
    best: tuple[float, list[int]] = (-math.inf, [])
    for n in range(limit + 1):
        for seq in itertools.product([1, 4, 5], repeat=n):
            toks = [BOS, *seq] + ([EOS] if n < limit else [])  # at the limit, no EOS needed
            logp = sum(stub.table[x, y].item() for x, y in itertools.pairwise(toks))
            best = max(best, (gnmt(logp, len(toks) - 1, alpha), list(seq)))
    return best[1]


@pytest.mark.parametrize(("limit", "alpha"), [(3, 0.0), (3, 1.0), (3, 5.0), (7, 0.0), (7, 0.6), (7, 2.0)])
def test_beam_search_finds_the_best_normalized_hypothesis(limit: int, alpha: float) -> None:
    stub, src = MarkovStub(), padded([[4], [5, 5, 5]])
    expected = brute_force_best(stub, limit, alpha)
    assert beam_search(stub, src, 3, alpha, max_len_a=0.0, max_len_b=limit) == [expected, expected]


@pytest.fixture(scope="module")
def reverser() -> Seq2SeqTransformer:
    """A tiny model trained for 300 steps (a few seconds) to reverse sequences of 2-7 symbols."""
    model, vocab, steps = tiny_model(seed=0, vocab=12), 12, 300
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        seqs = [torch.randint(FIRST, vocab, (int(n),), generator=g).tolist()
                for n in torch.randint(2, 8, (64,), generator=g)]
        src = padded(seqs)
        tgt = padded([[BOS] + s[::-1] + [EOS] for s in seqs])
        logits = model(src, tgt[:, :-1])
        loss = nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.mark.slow
def test_beam_search_on_trained_reverser(reverser: Seq2SeqTransformer) -> None:
    seqs = [[4, 5, 6, 7, 8, 9, 10], [11, 4], [6, 6, 7], [9, 8, 7, 6, 5], [10, 11, 4, 5, 6, 7]]
    src = padded(seqs)
    beam = beam_search(reverser, src, beam_size=4)
    greedy = greedy_search(reverser, src)
    assert beam == [s[::-1] for s in seqs]
    assert beam_search(reverser, src, beam_size=1) == greedy
    for s, b, g in zip(src, beam, greedy, strict=True):
        beam_score = gnmt(seq_logprob(reverser, s, b), len(b) + 1, 0.6)
        assert beam_score >= gnmt(seq_logprob(reverser, s, g), len(g) + 1, 0.6) - 1e-5
    # Inputs of unseen lengths make the model unsure and end sentences at very different steps.
    lengths = [1, 12, 9, 3, 15]
    src = random_src(lengths, 12, seed=7)
    greedy = greedy_search(reverser, src, max_len_a=1.0, max_len_b=2)
    assert greedy == [reference_greedy(reverser, s, n + 2) for s, n in zip(src, lengths, strict=True)]
    assert beam_search(reverser, src, 1, max_len_a=1.0, max_len_b=2) == greedy


class NoEos(nn.Module):
    """Wraps a model so that EOS is never (or, at step 0 with `eos_first`, always) chosen."""

    def __init__(self, model: Seq2SeqTransformer, eos_first: bool = False) -> None:
        super().__init__()
        self.model, self.cfg, self.eos_first = model, model.cfg, eos_first

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(src)

    def new_cache(self) -> list[dict]:
        return self.model.new_cache()

    def decode(self, tgt_in, memory, mask, cache=None, offset: int = 0) -> Tensor:
        logits = self.model.decode(tgt_in, memory, mask, cache, offset).clone()
        logits[..., EOS] = 1e4 if self.eos_first and offset == 0 else -1e4
        return logits


@pytest.mark.parametrize(("a", "b"), [(1.2, 10), (0.5, 1), (3.0, 10), (0.0, 0)])
def test_max_length_is_respected(a: float, b: int) -> None:
    model = NoEos(tiny_model(seed=3, max_len=24))
    lengths = [1, 4, 15]
    src = random_src(lengths, 16, seed=3)
    expected = [min(int(a * n + b), 24) for n in lengths]
    assert [len(h) for h in greedy_search(model, src, a, b)] == expected
    for k in (1, 3):
        assert [len(h) for h in beam_search(model, src, beam_size=k, max_len_a=a, max_len_b=b)] == expected


def test_eos_at_first_step_gives_empty_output() -> None:
    model = NoEos(tiny_model(seed=4), eos_first=True)
    src = random_src([2, 9, 5], 16, seed=4)
    assert greedy_search(model, src) == [[], [], []]
    assert beam_search(model, src, beam_size=3) == [[], [], []]


def test_beam_larger_than_vocabulary_raises() -> None:
    model, src = tiny_model(vocab=10), random_src([3], 10, seed=0)
    with pytest.raises(ValueError, match=r"beam_size=11 .*vocabulary size \(10\)"):
        beam_search(model, src, beam_size=11)
    assert len(beam_search(model, src, beam_size=10)[0]) <= int(1.2 * 3 + 10)  # K == V still works


def test_search_runs_in_eval_mode_and_restores_training_mode() -> None:
    stub, src = MarkovStub(), padded([[4, 4]])
    stub.train()  # the stub asserts eval mode in encode/decode
    assert greedy_search(stub, src) == [[4, 5]] and beam_search(stub, src, 2, 0.0) == [[5]]
    assert stub.training
