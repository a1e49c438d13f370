"""Checkpoint averaging (core/averaging.py, average_checkpoints.py): exact weighted means, reloads, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_BERT, TINY_LABELS, save_like_lightning, tiny_ner_batch, tiny_tagger

from average_checkpoints import main as average_main
from benchmarks.ner.soup import main as soup_main
from core.averaging import average_checkpoints, greedy_soup
from ner.module import TaggerModule
from nmt.module import TranslationModule

ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
CHECKED = ["bert.embeddings.word_embeddings.weight", "head.weight", "head.bias"]


@pytest.fixture
def taggers(tokenizer_file: Path, tmp_path: Path) -> list[Path]:
    """Two tiny tagger checkpoints with different weights (seeds 0 and 1)."""
    paths = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    for seed, path in enumerate(paths):
        save_like_lightning(tiny_tagger(tokenizer_file, seed=seed, optimizer={"lr": 1e-4 * (seed + 1)}), path)
    return paths


def logits(module: TaggerModule) -> torch.Tensor:
    """Eval-mode logits of `module` on the shared tiny batch."""
    b = tiny_ner_batch()
    with torch.no_grad():
        return module.eval()(b["input_ids"], b["attention_mask"], b["casing"])


def write(ckpt: dict, path: Path) -> Path:
    """torch.save `ckpt` to `path`; returns `path`."""
    torch.save(ckpt, path)
    return path


def test_self_average_reproduces_predictions(taggers: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "soup.ckpt"
    assert average_main([str(taggers[0]), str(taggers[0]), "--output", str(out)]) == out
    soup = TaggerModule.load_from_checkpoint(out, weights_only=False)
    original = TaggerModule.load_from_checkpoint(taggers[0], weights_only=False)
    assert torch.equal(logits(soup), logits(original))
    assert soup.labels == TINY_LABELS


def test_weighted_mean_is_exact_and_reloads(taggers: list[Path], tmp_path: Path) -> None:
    a, b = (torch.load(p, weights_only=False)["state_dict"] for p in taggers)
    soup = average_checkpoints(taggers, [0.25, 0.75])
    assert soup["averaged_from"]["weights"] == [0.25, 0.75]
    assert soup["hyper_parameters"]["optimizer"]["lr"] == pytest.approx(1e-4)  # the first file's dict
    for key in CHECKED:
        assert not torch.allclose(a[key], b[key])
        assert torch.allclose(soup["state_dict"][key], 0.25 * a[key] + 0.75 * b[key], atol=1e-7)
        assert soup["state_dict"][key].dtype == a[key].dtype
    unnormalised = average_checkpoints(taggers, [1, 3])
    assert all(torch.equal(unnormalised["state_dict"][k], v) for k, v in soup["state_dict"].items())
    torch.save(soup, tmp_path / "soup.ckpt")
    reloaded = TaggerModule.load_from_checkpoint(tmp_path / "soup.ckpt", weights_only=False)
    assert torch.equal(reloaded.head.weight, soup["state_dict"]["head.weight"])
    assert logits(reloaded).shape == (2, 7, len(TINY_LABELS)) and logits(reloaded).isfinite().all()


def test_nmt_uniform_soup_reloads_and_translates_forward(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"nmt{seed}.ckpt")
        save_like_lightning(TranslationModule(arch=ARCH, data_spec=DATA_SPEC), paths[-1])
    states = [torch.load(p, weights_only=False)["state_dict"] for p in paths]
    out = tmp_path / "soup.ckpt"
    average_main([*map(str, paths), "--output", str(out)])
    soup = TranslationModule.load_from_checkpoint(out, weights_only=False).eval()
    for key, value in soup.state_dict().items():
        assert torch.allclose(value, sum(s[key] for s in states) / 3, atol=1e-7), key
    src, tgt = torch.randint(4, 50, (2, 6)), torch.randint(4, 50, (2, 5))
    with torch.no_grad():
        assert soup.model(src, tgt).isfinite().all()


def test_equal_integer_buffers_are_copied_and_different_ones_refused(taggers: list[Path], tmp_path: Path) -> None:
    ckpts = [torch.load(p, weights_only=False) for p in taggers]
    for ckpt, value in zip(ckpts, (7, 7), strict=True):
        ckpt["state_dict"]["counter"] = torch.tensor([value, 1])
    paths = [write(c, tmp_path / f"int{i}.ckpt") for i, c in enumerate(ckpts)]
    soup = average_checkpoints(paths)
    assert soup["state_dict"]["counter"].dtype == torch.int64 and soup["state_dict"]["counter"].tolist() == [7, 1]
    ckpts[1]["state_dict"]["counter"] = torch.tensor([8, 1])
    write(ckpts[1], paths[1])
    with pytest.raises(ValueError, match=r"int1\.ckpt: non-float entry 'counter' differs"):
        average_checkpoints(paths)


def test_input_errors(taggers: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 checkpoints, got 1"):
        average_checkpoints(taggers[:1])
    with pytest.raises(ValueError, match=r"missing\.ckpt: no such checkpoint file"):
        average_checkpoints([taggers[0], tmp_path / "missing.ckpt"])
    with pytest.raises(ValueError, match=r"weights\.ckpt: not a Lightning checkpoint \(no 'state_dict'"):
        average_checkpoints([taggers[0], write({"model": {}}, tmp_path / "weights.ckpt")])
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.txt: cannot be read as a torch checkpoint"):
        average_checkpoints([taggers[0], tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="weights must be positive"):
        average_checkpoints(taggers, [1.0, -1.0])
    with pytest.raises(ValueError, match="got 1 weights for 2 checkpoints"):
        average_checkpoints(taggers, [1.0])


def test_model_mismatch_errors(tokenizer_file: Path, taggers: list[Path], tmp_path: Path) -> None:
    def other(name: str, **kw) -> Path:
        save_like_lightning(tiny_tagger(tokenizer_file, **kw), tmp_path / name)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"casing\.ckpt: state_dict keys differ .*only in .*casing\.ckpt: "
                                         r"\[casing_embed\.weight\]"):
        average_checkpoints([taggers[0], other("casing.ckpt", casing=True)])
    wide = other("wide.ckpt", config={**TINY_BERT, "intermediate_size": 32})
    with pytest.raises(ValueError, match=r"wide\.ckpt: tensor 'bert\.layers\.0\..*' has shape \(32, 16\), "
                                         r"but \(24, 16\) in"):
        average_checkpoints([taggers[0], wide])
    swapped = other("swapped.ckpt", labels=["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])  # same shapes
    with pytest.raises(ValueError, match=r"swapped\.ckpt: hyper_parameters differ .*data_spec\.labels"):
        average_checkpoints([taggers[0], swapped])
    pruned = torch.load(taggers[1], weights_only=False)
    pruned["compression"] = {"heads": {"bert_self": [[0, 1, 2, 3], [0, 1, 2, 3]]}}
    with pytest.raises(ValueError, match=r"pruned\.ckpt: checkpoint entries \['compression'\] differ"):
        average_checkpoints([taggers[0], write(pruned, tmp_path / "pruned.ckpt")])
    for name, heads in (("h4.ckpt", 4), ("h2.ckpt", 2)):  # NMT: 2 vs 4 heads, identical tensor shapes
        save_like_lightning(TranslationModule(arch={**ARCH, "num_heads": heads}, data_spec=DATA_SPEC), tmp_path / name)
    with pytest.raises(ValueError, match=r"h2\.ckpt: hyper_parameters differ .*arch\.num_heads: 4 vs 2"):
        average_checkpoints([tmp_path / "h4.ckpt", tmp_path / "h2.ckpt"])


@pytest.mark.slow
def test_command_line_writes_a_reloadable_file_and_errors_in_one_line(
        taggers: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cli" / "soup.ckpt"
    done = subprocess.run([sys.executable, "average_checkpoints.py", *map(str, taggers), "--weights", "0.7", "0.3",
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "averaged 2 checkpoints (weights 0.7, 0.3)" in done.stdout
    assert not out.with_name("soup.ckpt.tmp").exists()
    assert logits(TaggerModule.load_from_checkpoint(out, weights_only=False)).isfinite().all()
    monkeypatch.setattr(sys, "argv", ["average_checkpoints.py", str(taggers[0]), "--output", str(out)])
    with pytest.raises(SystemExit, match=r"^average_checkpoints\.py: error: averaging needs at least 2 "):
        average_main()


def test_windowing_settings_and_cli_bookkeeping_do_not_block_a_soup(taggers: list[Path], tmp_path: Path) -> None:
    """A tagger trained with document context averages with one without (same weights' meaning);
    a hyper-parameter missing in one file equals None in the other; decoding switches and a
    `crf: false` written by a newer version do not block a soup (the CRF shows in the state dict)."""
    ckpt = torch.load(taggers[1], weights_only=False)
    ckpt["hyper_parameters"]["data_spec"]["context_tokens"] = 32
    ckpt["hyper_parameters"]["_class_path"] = "ner.module.TaggerModule"
    ckpt["hyper_parameters"]["option_added_later"] = None  # absent from the first file
    ckpt["hyper_parameters"].update(constrained_decoding=True, crf=False, crf_lr_scale=100.0)  # added later
    soup = average_checkpoints([taggers[0], write(ckpt, tmp_path / "ctx.ckpt")])
    assert "context_tokens" not in soup["hyper_parameters"]["data_spec"]  # the first file's setting
    ckpt["hyper_parameters"]["data_spec"]["labels"] = list(reversed(TINY_LABELS))
    with pytest.raises(ValueError, match="data_spec.labels"):
        average_checkpoints([taggers[0], write(ckpt, tmp_path / "relabelled.ckpt")])


def test_greedy_soup_keeps_only_additions_that_do_not_hurt() -> None:
    # held-out score of a soup: made up per set, so each decision of the recipe is checked
    scores = {("b",): 0.9, ("b", "a"): 0.95, ("b", "a", "c"): 0.94, ("b", "a", "d"): 0.95}
    tried = []

    def held_out(paths):
        tried.append(tuple(paths))
        return scores[tuple(paths)]

    soup, trials = greedy_soup(["a", "b", "c", "d"], held_out, [0.8, 0.9, 0.7, 0.6])
    assert soup == ["b", "a", "d"]  # c lowered the score, d tied it (ties are kept)
    assert tried == [("b", "a"), ("b", "a", "c"), ("b", "a", "d")]  # best-first, the best alone not re-scored
    assert [t["kept"] for t in trials] == [True, False, True]
    with pytest.raises(ValueError, match="2 ingredients and 1 scores"):
        greedy_soup(["a", "b"], held_out, [0.1])


def test_ner_soup_script_writes_the_greedy_soup(taggers: list[Path], tmp_path: Path) -> None:
    conll = tmp_path / "data" / "conll2003"
    conll.mkdir(parents=True)
    for split in ("eng.testa", "eng.testb"):
        (conll / split).write_text("Peter B-PER\nin O\nBonn B-LOC\n\nEU O\nrejects O\nlamb O\n")
    out = tmp_path / "soup.json"
    soup_main([*map(str, taggers), str(taggers[0]), "--greedy", "--data_dir", str(tmp_path / "data"),
               "--out", str(out)])
    report = json.loads(out.read_text())
    uniform, trials = report["rows"][3], report["rows"][4:]  # rows: 3 ingredients, the uniform soup, trials
    assert uniform["weights"] == pytest.approx([1 / 3] * 3)
    assert len(report["greedy"]["trials"]) == 2 == len(trials)
    best_first = max(report["rows"][:3], key=lambda r: r["dev_quoted"])["checkpoint"]
    assert report["greedy"]["kept"][0] == best_first
    for record, row in zip(report["greedy"]["trials"], trials, strict=True):
        assert record["score"] == row["dev_quoted"] and record["paths"] == row["checkpoints"]
    assert report["best_by_dev"] in {r["name"] for r in report["rows"][3:]}
