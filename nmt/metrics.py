"""Corpus BLEU and chrF as a `torchmetrics.Metric`: exact under sharded evaluation.

Corpus BLEU is not an average of per-batch BLEUs: it is computed from n-gram match counts and lengths
summed over the corpus (chrF likewise from character n-gram counts). Each update adds sacreBLEU's own
sufficient statistics of its sentences (integers); torchmetrics sums them across processes, and sacreBLEU
computes the score from the sums — so N ranks decoding 1/N of the split each report the score of the
whole split, identical to `sacrebleu.corpus_score` on all of it, with sacreBLEU's signature.
"""

from __future__ import annotations

import sacrebleu
import torch
from torchmetrics import Metric


class CorpusBLEU(Metric):
    """sacreBLEU corpus BLEU and chrF (default settings, one reference) summed over updates and processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.bleu, self.chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
        for metric in (self.bleu, self.chrf):  # one reference per sentence: the signature's nrefs without an update
            metric.num_refs = 1
        bleu_stats = 2 + 2 * self.bleu.max_ngram_order  # hyp length, ref length, matches and totals per order
        chrf_stats = 3 * (self.chrf.char_order + self.chrf.word_order)  # hyp, ref, match counts per order
        self.add_state("bleu_stats", torch.zeros(bleu_stats, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("chrf_stats", torch.zeros(chrf_stats, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sentences", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hypotheses: list[str], references: list[str]) -> None:
        """Add the statistics of detokenised hypotheses against their references."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if not hypotheses:
            return
        for state, metric in (("bleu_stats", self.bleu), ("chrf_stats", self.chrf)):
            stats = torch.tensor(metric._extract_corpus_statistics(hypotheses, [references]), dtype=torch.long)
            setattr(self, state, getattr(self, state) + stats.sum(0).to(self.sentences.device))
        self.sentences += len(hypotheses)

    def compute(self) -> dict:
        """{"bleu", "chrf", "bleu_signature", "chrf_signature", "sentences"} of everything added."""
        return {"bleu": self.bleu._compute_score_from_stats(self.bleu_stats.tolist()).score,
                "chrf": self.chrf._compute_score_from_stats(self.chrf_stats.tolist()).score,
                "bleu_signature": str(self.bleu.get_signature()), "chrf_signature": str(self.chrf.get_signature()),
                "sentences": int(self.sentences)}
