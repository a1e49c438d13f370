"""Evaluation metrics built to be summed / gathered across processes equal the one-shot library scores."""

from __future__ import annotations

import random

import pytest
import torch

from core.metrics import GatheredRows, TokenMean
from nmt.metrics import CorpusBLEU
from nmt.module import corpus_scores
from tests.conftest import DATA, requires_data


@requires_data
def test_corpus_bleu_from_summed_statistics_equals_sacrebleu_on_the_whole_corpus() -> None:
    refs = (DATA / "multi30k/val.de").read_text(encoding="utf-8").splitlines()[:300]
    rng = random.Random(0)
    hyps = [" ".join(rng.sample(r.split(), len(r.split()))) if i % 3 else r for i, r in enumerate(refs)]
    parts = [CorpusBLEU(), CorpusBLEU()]  # two "ranks", uneven shares, several updates each
    for start in range(0, 300, 37):
        parts[start % 2].update(hyps[start:start + 37], refs[start:start + 37])
    merged = CorpusBLEU()
    for part in parts:
        merged.merge_state(part)  # the reduction DDP applies (sum of the states), in one process
    got, want = merged.compute(), corpus_scores(hyps, refs)
    assert got["bleu"] == want["bleu"] and got["chrf"] == want["chrf"]
    assert got["bleu_signature"] == want["bleu_signature"] and got["sentences"] == 300
    assert 20 < got["bleu"] < 90  # neither all-correct nor all-wrong: the statistics matter


def test_corpus_bleu_refuses_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        CorpusBLEU().update(["a", "b"], ["a"])


def test_token_mean_is_the_sum_over_tokens_not_a_mean_of_means() -> None:
    metric = TokenMean()
    metric.update(torch.tensor(10.0), 10)  # mean 1.0 over 10 tokens
    metric.update(torch.tensor(3.0), 1)  # mean 3.0 over 1 token
    assert float(metric.compute()) == pytest.approx(13 / 11)


def test_gathered_rows_score_all_rows_and_check_their_shape() -> None:
    metric = GatheredRows(2, lambda rows: {"n": float(len(rows)), "total": float(rows.sum())})
    assert metric.compute() == {}  # nothing evaluated
    metric.update(torch.tensor([[1, 2], [3, 4]]))
    metric.update(torch.tensor([[5.5, 6]]))
    assert metric.compute() == {"n": 3.0, "total": 21.5}
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        metric.update(torch.zeros(3))
