"""How good is each SVD initialisation of the compressed tagger *before* fine-tuning (issue 4)?

    python -m benchmarks.compression.svd_init --teacher T.ckpt                       # ~4 min on 2 CPU cores
    python -m benchmarks.compression.svd_init --teacher T.ckpt --max-eval-sentences 64 --out /tmp/svd_init.json

CoNLL-2003 dev F1 (eng.testa, IOB2-constrained decoding) of the teacher with
  - its word embedding at rank 64: plain SVD, and SVD weighted by sqrt(prior + count) of each token in
    the training data for priors 1, 10 and 100;
  - then (on the prior-1 embedding, as in `ner_compression.py`) every encoder nn.Linear at the rank
    giving >= 2x fewer encoder parameters: plain SVD of W, and activation-aware SVD (best fit of the
    layer outputs on the inputs of `--calibration-batches` training batches).
Dev, not test: these numbers choose the initialisation. Written to `benchmarks/results/compression/ner_svd_init.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from benchmarks.common import quiet_trainer
from benchmarks.compression.run import EMB_RANK, LINEARS, calibration_moments, load_for_scoring, rank_for_reduction
from compression.factorize import factorize_embedding, factorize_linears, token_frequency_weights
from core.training import git_commit
from ner.data import CoNLLDataModule
from ner.module import TaggerModule

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PRIORS = (1.0, 10.0, 100.0)


def main() -> None:
    """Score every initialisation on dev and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="fine-tuned TaggerModule checkpoint")
    p.add_argument("--calibration-batches", type=int, default=32)
    p.add_argument("--max-eval-sentences", type=int, default=None, help="first N dev sentences")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compression/ner_svd_init.json")
    args = p.parse_args()
    commit, dm, trainer = git_commit(), CoNLLDataModule(max_eval_sentences=args.max_eval_sentences), quiet_trainer()
    dm.setup()
    train_ids = [e.input_ids for e in dm.examples["train"]]

    def teacher() -> TaggerModule:
        return load_for_scoring(args.teacher)

    def dev_f1(model: TaggerModule) -> float:
        [dev] = trainer.validate(model, dm, verbose=False)
        return dev["val/f1"]

    rows = {"teacher": dev_f1(teacher())}
    vocab = teacher().bert.cfg.vocab_size
    for prior in (None, *PRIORS):
        model = teacher()
        weights = None if prior is None else token_frequency_weights(train_ids, vocab, prior)
        factorize_embedding(model.bert, EMB_RANK, row_weights=weights)
        rows["emb_h64_plain" if prior is None else f"emb_h64_weighted_prior{prior:g}"] = dev_f1(model)
        log.info("%s", rows)
    for aware in (False, True):
        model = teacher()
        rank = rank_for_reduction(model.bert, LINEARS)
        factorize_embedding(model.bert, EMB_RANK, row_weights=token_frequency_weights(train_ids, vocab))
        moments = calibration_moments(model, dm, args.calibration_batches if aware else 0)
        factorize_linears(model.bert, LINEARS, rank, input_moments=moments)
        rows[f"svd_linear_r{rank}_{'activation_aware' if aware else 'plain'}_emb_h64"] = dev_f1(model)
        log.info("%s", rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "untuned SVD initialisations, dev F1 (issue 4)",
                                    "teacher": str(args.teacher), "git_commit": commit,
                                    "decoding": "IOB2-constrained", "dev_f1": rows,
                                    "settings": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    log.info(f"wrote {args.out}")


if __name__ == "__main__":
    main()
