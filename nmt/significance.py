"""Is a BLEU difference real? sacreBLEU's paired bootstrap resampling (Koehn 2004) against a baseline.

A test set of 1,000 sentences moves corpus BLEU by a few tenths between systems that are equally
good, so a compressed model's "-0.3 BLEU" means little without its p-value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sacrebleu
from sacrebleu.significance import PairedTest


def paired_bootstrap(baseline: Sequence[str], systems: Mapping[str, Sequence[str]], refs: Sequence[str],
                     samples: int = 1000) -> dict[str, dict]:
    """BLEU of each system with the half-width of its 95 % bootstrap interval and the p-value of its difference
    from `baseline` (paired bootstrap, `samples` resamples of the test sentences, sacreBLEU's fixed seed).

    Returns {"baseline": {...}, name: {"bleu", "ci95", "p_value", "delta"}, ...} and the test's signature under
    "signature"."""
    lengths = {name: len(hyps) for name, hyps in {"baseline": baseline, **systems}.items()}
    wrong = {name: n for name, n in lengths.items() if n != len(refs)}
    if wrong:
        raise ValueError(f"paired_bootstrap: {len(refs)} references but hypotheses of {wrong}")
    names = ["baseline", *systems]
    test = PairedTest([("baseline", list(baseline)), *[(n, list(h)) for n, h in systems.items()]],
                      {"BLEU": sacrebleu.BLEU()}, [list(refs)], test_type="bs", n_samples=samples)
    signatures, scores = test()
    base = scores["BLEU"][0].score
    out: dict[str, dict] = {"signature": str(signatures["BLEU"])}
    for name, result in zip(names, scores["BLEU"], strict=True):
        out[name] = {"bleu": result.score, "ci95": float(result.ci), "delta": result.score - base,
                     "p_value": None if result.p_value is None else float(result.p_value)}
    return out
