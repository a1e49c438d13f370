"""Paired bootstrap of BLEU differences (nmt.significance) and the head-pruning benchmark's significance stage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import sacrebleu

from benchmarks.head_pruning import report as head_pruning_report
from benchmarks.head_pruning import significance
from core.training import file_sha256
from nmt.significance import paired_bootstrap

REFS = [f"ein hund läuft über die wiese nummer {i} und bellt laut" for i in range(60)]
WORSE = [r.replace("läuft", "geht").replace("laut", "") if i % 2 else r for i, r in enumerate(REFS)]


def bleu(hyps: list[str]) -> float:
    return sacrebleu.BLEU().corpus_score(hyps, [REFS]).score


def test_one_better_sentence_is_not_significant_thirty_are() -> None:
    near = list(WORSE)
    near[1] = REFS[1]
    out = paired_bootstrap(WORSE, {"near": near, "better": REFS}, REFS, samples=200)
    assert out["baseline"]["bleu"] == pytest.approx(bleu(WORSE)) and out["baseline"]["p_value"] is None
    assert out["near"]["delta"] == pytest.approx(bleu(near) - bleu(WORSE)) and out["near"]["delta"] > 0
    assert out["near"]["p_value"] > 0.05
    assert out["better"]["delta"] == pytest.approx(bleu(REFS) - bleu(WORSE)) and out["better"]["p_value"] < 0.05
    assert 0 < out["baseline"]["ci95"] < out["baseline"]["bleu"] and "bs:200" in out["signature"]


def test_hypotheses_must_match_the_references() -> None:
    with pytest.raises(ValueError, match=r"60 references but hypotheses of \{'short': 59\}"):
        paired_bootstrap(REFS, {"short": REFS[1:]}, REFS)


def bench_with_cached_translations(tmp_path: Path, stored_bleu: float) -> SimpleNamespace:
    """A benchmark state whose teacher, gate and scratch checkpoints were all decoded before (cache filled)."""
    test_src, test_ref = tmp_path / "test.en", tmp_path / "test.de"
    test_src.write_text("\n".join(REFS))
    test_ref.write_text("\n".join(REFS) + "\n")
    outputs = {"teacher": REFS, "pruned": WORSE, "tuned": REFS}
    for name, hyps in outputs.items():
        (tmp_path / f"{name}.ckpt").write_text(f"weights of {name}")
        cache = tmp_path / "hypotheses" / f"{file_sha256(tmp_path / f'{name}.ckpt')[:16]}.test.en.beam5.txt"
        cache.parent.mkdir(exist_ok=True)
        cache.write_text("\n".join(hyps))
    state = {"gates": {"teacher_bleu": 100.0, "rows": [
        {"lambda": "0.05", "checkpoint": str(tmp_path / "pruned.ckpt"), "bleu": stored_bleu,
         "finetuned_checkpoint": str(tmp_path / "tuned.ckpt"), "bleu_finetuned": 100.0, "finetune_epochs": 6,
         "finetune_config": "configs/nmt/finetune_pruned_rewarm.yaml"}]},
        "scratch": {"rows": [{"lambda": "0.05", "checkpoint": str(tmp_path / "gone.ckpt"), "bleu": 30.0}]}}
    saved = {}
    return SimpleNamespace(args=SimpleNamespace(teacher=str(tmp_path / "teacher.ckpt")), work=tmp_path,
                           test_src=test_src, test_ref=test_ref, state=state, saved=saved,
                           save=lambda stage, section: saved.update({stage: section}))


def test_stage_compares_every_stored_model_with_the_teacher(tmp_path: Path) -> None:
    bench = bench_with_cached_translations(tmp_path, stored_bleu=bleu(WORSE))
    significance.stage_significance(bench)
    section = bench.saved["significance"]
    assert section["teacher"]["bleu"] == pytest.approx(100.0)
    rows = {r["model"]: r for r in section["rows"]}
    # the scratch checkpoint is gone: not compared
    assert set(rows) == {"gates 0.05", "gates 0.05 + 6 ep finetune_pruned_rewarm"}
    assert rows["gates 0.05"]["delta"] == pytest.approx(bleu(WORSE) - 100) and rows["gates 0.05"]["p_value"] < 0.05
    assert rows["gates 0.05 + 6 ep finetune_pruned_rewarm"]["delta"] == 0
    text = head_pruning_report.markdown({"significance": section})
    assert f"| gates 0.05 | {bleu(WORSE):.2f} ± {rows['gates 0.05']['ci95']:.2f} | {bleu(WORSE) - 100:+.2f} |" in text


def test_stage_refuses_translations_that_no_longer_match_the_row(tmp_path: Path) -> None:
    bench = bench_with_cached_translations(tmp_path, stored_bleu=50.0)
    with pytest.raises(SystemExit, match="gates 0.05 decodes to BLEU .* its row says 50.00"):
        significance.stage_significance(bench)
