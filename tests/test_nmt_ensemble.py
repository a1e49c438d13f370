"""Ensemble decoding: the mean of the members' probabilities, through the cached search, and from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.sweep import REPO_ROOT, load_sweep, run_overrides
from nmt.ensemble import EnsembleModel, ensemble_translator
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer
from nmt.search import beam_search, greedy_search
from nmt.translate import load_translator, main, translate_lines
from tests.conftest import tiny_nmt_args
from train import main as train_main

VOCAB = 40


def _model(seed: int, d_model: int = 32, layers: int = 2) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(vocab_size=VOCAB, d_model=d_model, num_heads=4, d_ff=64, encoder_layers=layers,
                        decoder_layers=layers, dropout=0.0)
    return Seq2SeqTransformer(cfg).eval()


def _sources() -> torch.Tensor:
    torch.manual_seed(0)
    src = torch.randint(4, VOCAB, (5, 7))
    src[1, 5:] = 0  # padding: sentences of different lengths
    src[3, 3:] = 0
    return src


def test_one_member_is_the_model() -> None:
    model, src = _model(1), _sources()
    ensemble = EnsembleModel([model])
    tgt_in = torch.randint(4, VOCAB, (5, 4))
    torch.testing.assert_close(ensemble(src, tgt_in), torch.log_softmax(model(src, tgt_in), dim=-1))
    assert beam_search(ensemble, src, beam_size=3) == beam_search(model, src, beam_size=3)


def test_identical_members_search_like_one() -> None:
    # Every member's cache must follow the beams' reordering, or the copies' probabilities drift apart.
    model, src = _model(1), _sources()
    twice = EnsembleModel([model, _model(1)])
    assert greedy_search(twice, src) == greedy_search(model, src)
    assert beam_search(twice, src, beam_size=4) == beam_search(model, src, beam_size=4)


def test_cached_greedy_search_follows_the_mean_probability() -> None:
    # Members of different width and depth; the reference recomputes every prefix without caches.
    members = [_model(1, d_model=32, layers=2), _model(2, d_model=48, layers=1)]
    src = _sources()
    got = greedy_search(EnsembleModel(members), src, max_len_a=0.0, max_len_b=6)
    for row, hyp in zip(src, got, strict=True):
        prefix = [2]  # BOS
        for _ in range(6):
            probs = sum(torch.softmax(m(row[None], torch.tensor([prefix]))[0, -1], dim=-1) for m in members)
            probs[[0, 2]] = 0  # PAD and BOS are never generated
            prefix.append(int(probs.argmax()))
            if prefix[-1] == 3:
                break
        assert hyp == [t for t in prefix[1:] if t != 3]


def test_teacher_forced_ensemble_is_the_log_mean_probability() -> None:
    members, src = [_model(1), _model(2)], _sources()
    tgt_in = torch.randint(4, VOCAB, (5, 4))
    mean = sum(torch.softmax(m(src, tgt_in), dim=-1) for m in members) / 2
    torch.testing.assert_close(EnsembleModel(members)(src, tgt_in), mean.log())
    assert math.isclose(float(EnsembleModel(members)(src, tgt_in).detach().exp().sum(-1).mean()), 1.0, rel_tol=1e-5)


def test_members_with_another_vocabulary_are_refused() -> None:
    other = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=VOCAB + 1, d_model=32, num_heads=4, d_ff=64))
    with pytest.raises(ValueError, match="member 1 has vocab_size=41, member 0 40"):
        EnsembleModel([_model(1), other])


def test_cli_ensemble_of_two_trained_checkpoints(multi30k_slice: Path, tmp_path: Path) -> None:
    ckpts = []
    for seed in (1, 2):
        cli = train_main(tiny_nmt_args(multi30k_slice, tmp_path / f"seed{seed}", "--seed_everything", str(seed),
                                       "--trainer.max_steps", "4", "--test", "false",
                                       "--trainer.limit_val_batches", "0"))
        ckpts.append(str(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"))
    lines = (multi30k_slice / "val.en").read_text().splitlines()[:6]
    single = load_translator(ckpts[0])
    same_twice = ensemble_translator([load_translator(ckpts[0]), load_translator(ckpts[0])], [ckpts[0]] * 2)
    assert translate_lines(same_twice, lines, beam_size=3) == translate_lines(single, lines, beam_size=3)

    out = tmp_path / "hyp.de"
    main(["--ckpt", *ckpts, "--input", str(multi30k_slice / "val.en"), "--reference",
          str(multi30k_slice / "val.de"), "--output", str(out), "--beam", "2"])
    assert len(out.read_text().splitlines()) == 24
    scores = json.loads((tmp_path / "hyp.de.scores.json").read_text())
    assert "tok:13a" in scores["bleu_signature"] and 0 <= scores["bleu"] <= 100


def test_ensemble_recipe_is_make_train_in_bf16_once_per_seed() -> None:
    # The benchmark's bf16_full runs (`--trainer.precision bf16-mixed --seed_everything N` over small.yaml).
    sweep = load_sweep(REPO_ROOT / "configs/nmt/bf16_ensemble_sweep.yaml")
    assert sweep.configs == ("configs/nmt/small.yaml",)
    assert [run_overrides(sweep, run) for run in sweep.runs] == [
        ["--trainer.precision", "bf16-mixed", "--seed_everything", seed] for seed in ("1234", "1235", "1236")]
