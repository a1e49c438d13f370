"""Linear-chain CRF over word-level label scores, with IOB2 transition constraints.

A softmax tagger labels each word on its own, so it can emit `O I-PER` or `B-ORG I-LOC`,
which seqeval then reads as extra or broken entities. Viterbi decoding over the label
sequence with the invalid IOB2 transitions forbidden repairs that at no training cost
(`viterbi` on log-probabilities); a CRF also learns transition scores and trains on the
sequence likelihood (Lample et al., 2016). Hand-written: PyTorch has no CRF and the CRF
packages on PyPI are unmaintained; tests check both against brute-force path enumeration.

Sequences are word-level and left-packed: `mask[b, :n_b]` is True, the rest False.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# A finite "forbidden" score: -inf would make logsumexp NaN on rows with every path forbidden.
FORBIDDEN = -1e4


def iob2_transition_penalty(labels: list[str]) -> Tensor:
    """(L, L) matrix, 0 where label j may follow label i in IOB2 and FORBIDDEN where it may not.

    `I-X` may only follow `B-X` or `I-X`; everything else may follow anything. The sequence
    start is `iob2_start_penalty`'s business.
    """
    penalty = torch.zeros(len(labels), len(labels))
    for j, label in enumerate(labels):
        if label.startswith("I-"):
            for i, previous in enumerate(labels):
                if previous[2:] != label[2:] or previous == "O":
                    penalty[i, j] = FORBIDDEN
    return penalty


def iob2_start_penalty(labels: list[str]) -> Tensor:
    """(L,) scores for the first label of a sentence: FORBIDDEN for `I-X`, 0 otherwise.

    Only for sequences that open a sentence: a later window of a long sentence may begin inside an entity.
    """
    return torch.tensor([FORBIDDEN if label.startswith("I-") else 0.0 for label in labels])


def pack_words(values: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
    """Gather the sub-token rows marked in `first` (B, T) into left-packed (B, N, ...) plus its mask."""
    position = first.long().cumsum(1) - 1  # index of each word within its row
    counts = first.sum(1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    packed = values.new_zeros((values.shape[0], width, *values.shape[2:]))
    rows, cols = first.nonzero(as_tuple=True)
    packed[rows, position[rows, cols]] = values[rows, cols]
    mask = torch.arange(width, device=first.device)[None, :] < counts[:, None]
    return packed, mask


def unpack_words(packed: Tensor, first: Tensor, fill: int) -> Tensor:
    """Inverse of `pack_words` for (B, N) integer tensors: back to (B, T), `fill` off the words."""
    out = torch.full(first.shape, fill, dtype=packed.dtype, device=packed.device)
    rows, cols = first.nonzero(as_tuple=True)
    out[rows, cols] = packed[rows, (first.long().cumsum(1) - 1)[rows, cols]]
    return out


def viterbi(emissions: Tensor, mask: Tensor, transitions: Tensor, start: Tensor | None = None,
            end: Tensor | None = None) -> Tensor:
    """Highest-scoring label path (B, N) under emission + transition (+ start/end) scores.

    `start` is (L,) or per row (B, L). Positions past a row's length hold that row's last label
    (unused by callers).
    """
    batch, length, num_labels = emissions.shape
    score = emissions[:, 0] + (start if start is not None else 0)
    identity = torch.arange(num_labels, device=emissions.device).expand(batch, num_labels)
    backpointers = []
    for t in range(1, length):
        best, previous = (score[:, :, None] + transitions[None]).max(dim=1)
        step = mask[:, t, None]
        score = torch.where(step, best + emissions[:, t], score)
        # Past a row's end the label carries over unchanged, so backtracking passes through.
        backpointers.append(torch.where(step, previous, identity))
    if end is not None:
        score = score + end
    path = [score.argmax(-1)]
    for pointers in reversed(backpointers):
        path.append(pointers.gather(1, path[-1][:, None]).squeeze(1))
    return torch.stack(path[::-1], dim=1)


class CRF(nn.Module):
    """Learned transition / start / end scores over `labels`, IOB2-invalid transitions forbidden."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        num_labels = len(labels)
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))
        self.start = nn.Parameter(torch.zeros(num_labels))
        self.end = nn.Parameter(torch.zeros(num_labels))
        self.register_buffer("penalty", iob2_transition_penalty(labels), persistent=False)

    def _transitions(self) -> Tensor:
        return self.transitions + self.penalty

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z per sequence (B,): log-sum-exp of every path's score (forward algorithm)."""
        transitions = self._transitions()
        alpha = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[:, :, None] + transitions[None], dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], step, alpha)
        return torch.logsumexp(alpha + self.end, dim=-1)

    def path_score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Score of the given label paths (B,): start + emissions + transitions + end."""
        steps = mask.float()
        score = self.start[tags[:, 0]] + (emissions.gather(2, tags[:, :, None]).squeeze(2) * steps).sum(1)
        score = score + (self._transitions()[tags[:, :-1], tags[:, 1:]] * steps[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).clamp(min=0)[:, None]).squeeze(1)
        return score + self.end[last]

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood of the gold paths, summed over sequences, divided by the word count."""
        present = mask[:, 0]  # rows without words (none in practice) contribute nothing
        emissions, tags, mask = emissions[present], tags[present], mask[present]
        nll = self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)
        return nll.sum() / mask.sum().clamp(min=1)

    def decode(self, emissions: Tensor, mask: Tensor, start_penalty: Tensor | None = None) -> Tensor:
        """Best valid label path per sequence (B, N); `start_penalty` (L,) or (B, L) is added to the start scores."""
        start = self.start if start_penalty is None else self.start + start_penalty
        return viterbi(emissions, mask, self._transitions(), start, self.end)
