"""Where does a rank-H word embedding lose F1? (issue 4 diagnostic)

    python -m benchmarks.compression.embedding_oracle --teacher T.ckpt \
        --student benchmarks/work/ner_compression/emb_h64.ckpt

For a fine-tuned tagger with a factorised word embedding (`ner_compression.py`'s `emb_h64`), CoNLL-2003
test F1 (IOB2-constrained decoding) when the rows of the tokens seen fewer than k times in the training
data are swapped for the teacher's full-rank rows (k = 1: unseen tokens only; "all": every row), with
the student's encoder as fine-tuned. Also, per training-count bucket: its share of the test sub-tokens
and the relative squared error of the teacher's rows projected on the rank-H SVD subspace, for the row
weightings `token_frequency_weights` offers (and a capped one), so the two can be read together.
Written to `benchmarks/results/compression/ner_embedding_oracle.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from typing_extensions import override

from benchmarks.common import quiet_trainer
from benchmarks.compression.run import load_for_scoring
from compression.factorize import token_counts
from core.training import git_commit
from ner.data import CoNLLDataModule

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = {"unseen": (0, 1), "1-4": (1, 5), "5-49": (5, 50), ">=50": (50, None)}


class RowsFromTeacher(nn.Module):
    """The student's factorised embedding, except for the `swap` tokens, which read the teacher's rows."""

    def __init__(self, student: nn.Module, teacher_rows: Tensor, swap: Tensor) -> None:
        super().__init__()
        self.student, self.teacher_rows, self.swap = student, teacher_rows, swap
        self.num_embeddings = student.num_embeddings  # the vocabulary check reads it

    @override
    def forward(self, ids: Tensor) -> Tensor:
        out = self.student(ids)
        return torch.where(self.swap[ids].unsqueeze(-1), self.teacher_rows[ids], out)


def bucket_masks(counts: Tensor) -> dict[str, Tensor]:
    """Token-id masks of the training-count buckets."""
    return {name: (counts >= lo) & (counts < hi if hi is not None else True) for name, (lo, hi) in BUCKETS.items()}


def projection_errors(rows: Tensor, weights: Tensor, rank: int, masks: dict[str, Tensor], test: Tensor) -> dict:
    """Per bucket, the test-frequency-weighted mean of |row - projection|^2 / |row|^2 on the top-`rank`
    right singular vectors of diag(weights) rows (the subspace `FactorizedEmbedding.from_embedding` keeps)."""
    _, _, vh = torch.linalg.svd(rows * weights[:, None], full_matrices=False)
    basis = vh[:rank]
    rel = ((rows - rows @ basis.T @ basis).norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)) ** 2
    out = {name: float((rel[m] * test[m]).sum() / test[m].sum()) for name, m in masks.items()}
    out["all test tokens"] = float((rel * test).sum() / test.sum())
    return out


def main() -> None:
    """Score the swaps on test, compute the projection errors and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="the fine-tuned TaggerModule the student came from")
    p.add_argument("--student", type=Path, required=True, help="fine-tuned TaggerModule with a factorised embedding")
    p.add_argument("--thresholds", type=int, nargs="+", default=[1, 5, 50], help="swap tokens seen < k times")
    p.add_argument("--max-eval-sentences", type=int, default=None, help="first N test sentences")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compression/ner_embedding_oracle.json")
    args = p.parse_args()
    commit, dm, trainer = git_commit(), CoNLLDataModule(max_eval_sentences=args.max_eval_sentences), quiet_trainer()
    dm.setup()
    teacher, student = load_for_scoring(args.teacher), load_for_scoring(args.student)
    words = student.bert.embeddings.word_embeddings
    if not hasattr(words, "table"):
        raise ValueError(f"{args.student}: its word embedding is not factorised (no rank-H table)")
    vocab = teacher.bert.cfg.vocab_size
    counts = token_counts([e.input_ids for e in dm.examples["train"]], vocab)
    test = token_counts([e.input_ids for e in dm.examples["test"]], vocab)
    masks = bucket_masks(counts)
    teacher_rows = teacher.bert.embeddings.word_embeddings.weight.detach()

    def test_f1() -> float:
        [scores] = trainer.test(student, dm, verbose=False)
        return scores["test/f1"]

    f1 = {"as fine-tuned": test_f1()}
    for k in [*args.thresholds, None]:
        swap = counts < k if k is not None else torch.ones(vocab, dtype=torch.bool)
        student.bert.embeddings.word_embeddings = RowsFromTeacher(words, teacher_rows, swap)
        f1[f"teacher rows for train count < {k}" if k is not None else "teacher rows for every token"] = test_f1()
        log.info("%s", f1)
    student.bert.embeddings.word_embeddings = words
    rows = teacher_rows.double()
    weightings = {f"sqrt({prior:g} + count)": (prior + counts).sqrt() for prior in (1.0, 10.0, 100.0)}
    weightings["sqrt(1 + min(count, 50))"] = (1 + counts.clamp(max=50)).sqrt()
    weightings["uniform"] = torch.ones(vocab, dtype=torch.float64)
    errors = {name: projection_errors(rows, w.double(), words.rank, masks, test.double())
              for name, w in weightings.items()}
    buckets = {name: {"token_types": int(m.sum()), "test_share": float(test[m].sum() / test.sum())}
               for name, m in masks.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "rank-H embedding oracle, CoNLL-2003 test F1 (issue 4)", "teacher": str(args.teacher),
        "student": str(args.student), "rank": words.rank, "git_commit": commit, "decoding": "IOB2-constrained",
        "test_f1": f1, "buckets": buckets, "relative_projection_error": errors,
        "settings": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    log.info("%s", json.dumps({"test_f1": f1, "buckets": buckets, "relative_projection_error": errors}, indent=1))
    log.info(f"wrote {args.out}")


if __name__ == "__main__":
    main()
