"""The CRF and constrained Viterbi decoding against brute-force enumeration of every label path."""

from __future__ import annotations

import itertools

import pytest
import torch

from ner.crf import CRF, FORBIDDEN, iob2_start_penalty, iob2_transition_penalty, pack_words, unpack_words, viterbi

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def brute_force(crf: CRF, emissions: torch.Tensor, length: int) -> tuple[torch.Tensor, list[int]]:
    """log Z and the best path of one sequence by scoring every one of L^length label paths."""
    tags = torch.tensor(list(itertools.product(range(len(LABELS)), repeat=length)))
    mask = torch.ones_like(tags, dtype=torch.bool)
    scores = crf.path_score(emissions[None, :length].expand(len(tags), -1, -1), tags, mask)
    return torch.logsumexp(scores, 0), tags[scores.argmax()].tolist()


@pytest.fixture
def crf() -> CRF:
    torch.manual_seed(0)
    crf = CRF(LABELS)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def test_iob2_penalty_forbids_only_inside_without_its_begin() -> None:
    penalty = iob2_transition_penalty(LABELS)
    forbidden = {(LABELS[i], LABELS[j]) for i, j in (penalty == FORBIDDEN).nonzero().tolist()}
    assert forbidden == {("O", "I-PER"), ("B-LOC", "I-PER"), ("I-LOC", "I-PER"),
                         ("O", "I-LOC"), ("B-PER", "I-LOC"), ("I-PER", "I-LOC")}


def test_partition_and_decode_equal_brute_force(crf: CRF) -> None:
    lengths = [4, 1, 3]  # left-packed rows of different lengths in one padded batch
    emissions = torch.randn(len(lengths), max(lengths), len(LABELS))
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    log_z, paths = crf.log_partition(emissions, mask), crf.decode(emissions, mask)
    for row, length in enumerate(lengths):
        expected_z, expected_path = brute_force(crf, emissions[row], length)
        torch.testing.assert_close(log_z[row], expected_z)
        assert paths[row, :length].tolist() == expected_path


def test_nll_is_per_word_negative_log_likelihood(crf: CRF) -> None:
    emissions = torch.randn(2, 3, len(LABELS))
    tags = torch.tensor([[1, 2, 0], [3, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    expected = sum(brute_force(crf, emissions[r], n)[0] - crf.path_score(emissions[r:r + 1, :n], tags[r:r + 1, :n],
                                                                       mask[r:r + 1, :n])[0]
                   for r, n in ((0, 3), (1, 1))) / 4
    torch.testing.assert_close(crf.nll(emissions, tags, mask), expected)


def test_constrained_viterbi_repairs_an_inside_tag_after_outside() -> None:
    # Per-word argmax: O I-PER I-PER -- seqeval would read an entity missing its B-. The constrained
    # path must start the entity with B-PER (the next best label of word 2), not drop it.
    probs = torch.tensor([[[0.9, 0.02, 0.04, 0.02, 0.02], [0.3, 0.25, 0.4, 0.03, 0.02], [0.1, 0.05, 0.8, 0.03, 0.02]]])
    assert probs.argmax(-1).tolist() == [[0, 2, 2]]
    path = viterbi(probs.log(), torch.ones(1, 3, dtype=torch.bool), iob2_transition_penalty(LABELS))
    assert [LABELS[i] for i in path[0].tolist()] == ["O", "B-PER", "I-PER"]


def test_start_penalty_applies_only_to_rows_that_open_a_sentence() -> None:
    # Both rows would start with I-PER; only the first opens its sentence (the second is a later window).
    scores = torch.log(torch.tensor([[0.05, 0.3, 0.55, 0.05, 0.05]] * 2))[:, None, :]
    start = iob2_start_penalty(LABELS)[None] * torch.tensor([[1.0], [0.0]])
    path = viterbi(scores, torch.ones(2, 1, dtype=torch.bool), iob2_transition_penalty(LABELS), start)
    assert [LABELS[i] for i in path[:, 0].tolist()] == ["B-PER", "I-PER"]


def test_pack_unpack_round_trip() -> None:
    first = torch.tensor([[False, True, False, True, True, False], [False, True, True, False, False, False]])
    values = torch.arange(12).view(2, 6)
    packed, mask = pack_words(values, first)
    assert packed.tolist() == [[1, 3, 4], [7, 8, 0]] and mask.tolist() == [[True] * 3, [True, True, False]]
    restored = unpack_words(packed, first, fill=-1)
    assert torch.equal(restored[first], values[first]) and (restored[~first] == -1).all()
