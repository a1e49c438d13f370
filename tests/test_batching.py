"""Length-bucketed batching: budgets, coverage, epoch-determined order, sharding, resume."""

from __future__ import annotations

import pytest
import torch

from core.batching import LengthBatchSampler


def _lengths(n: int = 500) -> list[int]:
    return torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("shuffle", [False, True])
def test_token_budget_is_respected_and_every_item_appears_once(shuffle):
    lengths = _lengths()
    sampler = LengthBatchSampler(lengths, max_tokens=300, shuffle=shuffle, seed=3)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 300 for b in batches)


def test_sentence_count_batches():
    sampler = LengthBatchSampler(_lengths(50), batch_size=8, shuffle=True)
    assert [len(b) for b in sorted(sampler, key=len)] == [2] + [8] * 6


def test_order_is_a_function_of_the_epoch_and_resumes_mid_epoch():
    sampler = LengthBatchSampler(_lengths(), max_tokens=300, shuffle=True, seed=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and len(epoch1) == len(epoch0)
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    sampler.resume_at(0, 5)
    assert list(sampler) == epoch0[5:]
    assert list(sampler) == epoch0  # the skip applies to one pass only
    sampler.resume_at(0, 5)
    sampler.set_epoch(1)
    assert list(sampler) == epoch1  # a position saved in another epoch is not applied


def test_ranks_get_disjoint_shards_of_equal_size():
    ranks = [LengthBatchSampler(_lengths(), max_tokens=300, shuffle=True, seed=3, rank=r, num_replicas=2).batches()
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    assert not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))


def test_exactly_one_limit():
    with pytest.raises(ValueError, match="exactly one"):
        LengthBatchSampler([1, 2], max_tokens=10, batch_size=2)


def test_evaluation_shards_cover_every_item_once_with_balanced_lengths():
    lengths = _lengths(101)
    ranks = [LengthBatchSampler(lengths, max_tokens=300, rank=r, num_replicas=4, even_ranks=False).batches()
             for r in range(4)]
    items = [[i for batch in rank for i in batch] for rank in ranks]
    assert sorted(sum(items, [])) == list(range(101))  # every item once, none dropped
    assert {len(x) for x in items} == {25, 26}
    tokens = [sum(lengths[i] for i in x) for x in items]
    assert max(tokens) - min(tokens) <= max(lengths)  # interleaved sorted items: the same length profile
    for rank in ranks:  # each share is still batched under the token budget
        assert all(len(b) * max(lengths[i] for i in b) <= 300 for b in rank)


def test_evaluation_with_fewer_batches_than_ranks_still_gives_every_rank_a_batch():
    lengths = [5] * 10  # one batch of 10 in one process
    assert len(LengthBatchSampler(lengths, max_tokens=100).batches()) == 1
    ranks = [LengthBatchSampler(lengths, max_tokens=100, rank=r, num_replicas=3, even_ranks=False).batches()
             for r in range(3)]
    assert all(ranks)
    assert sorted(i for rank in ranks for batch in rank for i in batch) == list(range(10))
    with pytest.raises(ValueError, match="2 evaluation items cannot give each of 3"):
        LengthBatchSampler([5, 5], max_tokens=100, rank=0, num_replicas=3, even_ranks=False).batches()


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        LengthBatchSampler([1, 2], batch_size=2, rank=2, num_replicas=2)
