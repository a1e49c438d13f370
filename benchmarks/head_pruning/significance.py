"""`significance` stage of benchmarks.head_pruning.run: is each pruned model's BLEU difference from the teacher real?

Every model of the gates and scratch sections (pruned, pruned + fine-tuned, from scratch) is decoded on
test2016 (beam 5, the rows' own setting) and compared with the teacher by sacreBLEU's paired bootstrap
(`nmt.significance.paired_bootstrap`). Translations are cached per checkpoint content (sha256), so a rerun
only decodes models that are new or were retrained.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.head_pruning.report import recipe_label
from core.training import file_sha256
from nmt.significance import paired_bootstrap

log = logging.getLogger(__name__)

BEAM = 5
SAMPLES = 1000


def translations(ckpt: str, bench) -> list[str]:
    """test2016 translations (beam 5) of a checkpoint, from the cache when its content was decoded before."""
    from nmt.translate import evaluate_file, load_translator
    cache = bench.work / "hypotheses" / f"{file_sha256(ckpt)[:16]}.{bench.test_src.name}.beam{BEAM}.txt"
    if cache.is_file():
        return cache.read_text(encoding="utf-8").split("\n")
    result = evaluate_file(load_translator(ckpt), bench.test_src, bench.test_ref, BEAM)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("\n".join(result["hypotheses"]), encoding="utf-8")
    log.info(f"[significance] {ckpt}: BLEU {result['bleu']:.2f}")
    return result["hypotheses"]


def compared_models(state: dict) -> dict[str, tuple[str, float]]:
    """Name -> (checkpoint, BLEU stored in its row) for every model the gates and scratch sections measured."""
    models = {}
    for r in state.get("gates", {}).get("rows", []):
        models[f"gates {r['lambda']}"] = (r["checkpoint"], r["bleu"])
        if "finetuned_checkpoint" in r:
            models[f"gates {r['lambda']} + {recipe_label(r)}"] = (r["finetuned_checkpoint"], r["bleu_finetuned"])
    for r in state.get("scratch", {}).get("rows", []):
        models[f"scratch {r['lambda']}"] = (r["checkpoint"], r["bleu"])
    return models


def stage_significance(bench) -> None:
    """Paired bootstrap of every gates/scratch model against the teacher; one row per model."""
    models = {name: m for name, m in compared_models(bench.state).items() if Path(m[0]).is_file()}
    if not models:
        raise SystemExit("significance: run the gates (and scratch) stages first")
    refs = bench.test_ref.read_text(encoding="utf-8").splitlines()
    teacher = translations(bench.args.teacher, bench)
    result = paired_bootstrap(teacher, {name: translations(ckpt, bench) for name, (ckpt, _) in models.items()},
                              refs, SAMPLES)
    rows = []
    for name, (ckpt, stored) in {"baseline": (bench.args.teacher, bench.state["gates"]["teacher_bleu"]),
                                 **models}.items():
        r = result[name]
        if abs(r["bleu"] - stored) > 0.01:  # the cache or the checkpoint no longer matches the row
            raise SystemExit(f"significance: {name} decodes to BLEU {r['bleu']:.2f}, its row says {stored:.2f} "
                             f"({ckpt}); rerun its stage")
        if name != "baseline":
            rows.append({"model": name, "checkpoint": ckpt, **r})
    bench.save("significance", {"test": "paired bootstrap resampling vs the teacher (sacreBLEU)",
                                "signature": result["signature"], "samples": SAMPLES, "beam": BEAM,
                                "teacher": result["baseline"], "rows": rows})
