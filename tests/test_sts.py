"""Sentence encoder, STS evaluation, FFN pruning and prune-then-distil (issue 6), on tiny BERTs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import DATA, requires_data, save_like_lightning
from safetensors.torch import save_file
from scipy.stats import spearmanr
from tokenizers import BertWordPieceTokenizer

from compression.ffn import ffn_taylor_importance, neuron_masks, neurons_to_keep, prune_ffns
from compression.importance import taylor_importance
from compression.prune import heads_to_keep, prune_model
from compression.spec import compression_spec
from compression.student import attach_teacher
from core.bert import BertConfig, BertModel
from core.hf_import import default_checkpoint_dir, load_tokenizer
from sts.data import SentenceDataModule, STSPair, read_sentences, read_sts, tokenize
from sts.module import SentenceEncoderModule, evaluate_sts, pool, spearman_x100
from sts.pipeline import (
    PipelineConfig,
    check_config,
    distil,
    markdown_table,
    prune_and_distil_iteratively,
    prune_by_taylor,
    run_pipeline,
)
from sts.timing import equal_speed_comparison

TINY = {"vocab_size": 120, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 64}
WORDS = "EU rejects German call to boycott British lamb .".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(3 + k % 5),), generator=gen))
            for k in range(n)]


def tiny_module(tokenizer_file: Path, seed: int = 0, **kwargs) -> SentenceEncoderModule:
    torch.manual_seed(seed)
    kwargs.setdefault("data_spec", {"tokenizer": str(tokenizer_file), "max_length": 32})
    config = {**TINY, "vocab_size": load_tokenizer(tokenizer_file).get_vocab_size()}
    return SentenceEncoderModule(bert_config=config, **kwargs).eval()


def tiny_datamodule(tokenizer_file: Path, folder: Path, n_train: int) -> SentenceDataModule:
    """`n_train` crafted training sentences and 16 scored STS pairs written under `folder`."""
    train = folder / "train.txt"
    train.write_text("\n".join(sentences(n_train)) + "\n")
    sts = folder / "sts.csv"
    sts.write_text("".join(f"{a},{b},{i % 6}\n" for i, (a, b) in enumerate(zip(sentences(16), sentences(16, 2),
                                                                                 strict=True))))
    return SentenceDataModule([str(train)], {"en": str(sts)}, tokenizer=str(tokenizer_file), batch_size=16,
                              max_length=32)


def test_mean_pooling_ignores_padding(tokenizer_file: Path) -> None:
    model = tiny_module(tokenizer_file)
    short, long = "EU rejects lamb", "EU rejects German call to boycott British lamb"
    batch = tokenize(model.tokenizer, [short, long], 32)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # the short one is padded
    alone = tokenize(model.tokenizer, [short], 32)
    with torch.no_grad():
        padded, unpadded = model(**batch)[0], model(**alone)[0]
    torch.testing.assert_close(padded, unpadded, atol=1e-5, rtol=0)
    hidden = torch.randn(1, 3, 4)
    assert torch.allclose(pool(hidden, torch.tensor([[1, 1, 0]])), hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, torch.tensor([[1, 1, 0]]), "cls"), hidden[:, 0])


def test_spearman_equals_scipy_on_a_crafted_set(tokenizer_file: Path) -> None:
    predicted = [0.1, 0.9, 0.4, 0.4, -0.2, 0.7, 0.3]  # a tie, negative values
    gold = [1.0, 5.0, 2.5, 3.0, 0.0, 2.5, 4.0]
    assert spearman_x100(predicted, gold) == pytest.approx(100 * spearmanr(predicted, gold).statistic, abs=1e-9)
    model = tiny_module(tokenizer_file)
    pairs = [STSPair(a, b, float(i % 6)) for i, (a, b) in enumerate(zip(sentences(12), sentences(12, 1),
                                                                          strict=True))]
    u, v = model.encode([p.sentence1 for p in pairs]), model.encode([p.sentence2 for p in pairs])
    expected = 100 * spearmanr((u * v).sum(-1).tolist(), [p.score for p in pairs]).statistic
    assert evaluate_sts(model, pairs) == pytest.approx(expected, abs=1e-6)


def test_ffn_and_head_pruned_model_equals_masked_model() -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig.from_dict(TINY)).eval()
    ids = torch.randint(1, 120, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    loss = lambda m, b: m(b, mask).pow(2).mean()  # noqa: E731
    plan = neurons_to_keep(ffn_taylor_importance(model, [ids], loss), 0.5)
    heads = heads_to_keep(taylor_importance(model, [ids], loss), 0.5)
    assert sum(map(len, plan)) == 32 and len({len(p) for p in plan}) > 1  # global ranking: widths differ
    neuron_mask = [torch.zeros(32).index_fill_(0, torch.tensor(p), 1.0) for p in plan]
    for attn, keep in zip((layer.self_attn for layer in model.layers), heads["bert_self"], strict=True):
        attn.head_mask = torch.zeros(4).index_fill_(0, torch.tensor(keep, dtype=torch.long), 1.0)
    with torch.no_grad(), neuron_masks(model, neuron_mask):
        masked = model(ids, mask)
    for layer in model.layers:
        layer.self_attn.head_mask = None
    prune_ffns(prune_model(model, heads), plan)
    assert [layer.ffn.fc1.out_features for layer in model.layers] == [len(p) for p in plan]
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), masked, atol=1e-5, rtol=0)
    assert compression_spec(model)["ffn"] == plan


def test_distilled_pruned_student_reloads_alone(tokenizer_file: Path, tmp_path: Path) -> None:
    teacher = tiny_module(tokenizer_file, seed=1)
    teacher_path = tmp_path / "teacher.ckpt"
    save_like_lightning(teacher, teacher_path)
    dm = tiny_datamodule(tokenizer_file, tmp_path, 48)
    student = tiny_module(tokenizer_file, seed=2, kd={"teacher": str(teacher_path)}, data_spec=dm.spec(),
                          optimizer={"lr": 1e-3})
    prune_model(student.bert, {"bert_self": [[0, 2], [1]]})
    prune_ffns(student.bert, [list(range(0, 32, 2)), list(range(20))])
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    probe = sentences(5, 3)
    before = student.encode(probe)
    trainer.fit(student, dm)
    assert student.teacher_cache is not None and len(student.teacher_cache) == len(dm.sentences)
    assert "val/spearman_en" in trainer.callback_metrics
    assert not torch.allclose(student.encode(probe), before)  # it trained
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    teacher_path.unlink()
    tokenizer_file_text = tokenizer_file.read_text()
    reloaded = SentenceEncoderModule.load_from_checkpoint(path, weights_only=False)
    assert reloaded.teacher is None and tokenizer_file.read_text() == tokenizer_file_text
    assert [a.num_heads for a in (layer.self_attn for layer in reloaded.bert.layers)] == [2, 1]
    torch.testing.assert_close(reloaded.encode(probe), student.encode(probe), atol=1e-6, rtol=0)


def test_iterative_pruning_reaches_the_target_of_the_original_counts(tokenizer_file: Path, tmp_path: Path) -> None:
    dm = tiny_datamodule(tokenizer_file, tmp_path, 32)
    train, sts = dm.hparams.train_files[0], dm.hparams.sts_files["en"]
    cfg = PipelineConfig(train_files=[train], sts_files={"en": sts}, score_file=sts, score_pairs=16,
                         prune_heads=0.5, prune_ffn=0.5, prune_steps=2, epochs=2, output_dir=str(tmp_path / "runs"))
    half_way = tiny_module(tokenizer_file, data_spec=dm.spec())
    shape = prune_by_taylor(half_way, dm, cfg, half_way.bert.cfg, progress=0.5)  # a quarter of 8 heads, 64 neurons
    assert sum(shape["heads_per_layer"]) == 6 and sum(shape["ffn_per_layer"]) == 48
    teacher = tiny_module(tokenizer_file, seed=1, data_spec=dm.spec())
    cache = teacher.encode(dm.sentences, normalized=False)
    probe = sentences(4, 3)
    student, metrics, shape = prune_and_distil_iteratively(teacher, teacher, dm, cfg, cache)
    assert sum(shape["heads_per_layer"]) == 4 and sum(shape["ffn_per_layer"]) == 32
    assert [a.num_heads for a in (layer.self_attn for layer in student.bert.layers)] == shape["heads_per_layer"]
    assert "val/spearman_en" in metrics
    assert not torch.allclose(student.encode(probe), teacher.encode(probe))  # pruned and trained, teacher intact
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["pruned_distilled_step1",
                                                                     "pruned_distilled_step2"]
    with pytest.raises(ValueError, match="prune_steps must be >= 1 and divide epochs"):
        check_config(PipelineConfig(train_files=[], sts_files={"en": "x"}, score_file="x", epochs=3, prune_steps=2))


def test_similarity_term_matches_the_cosine_geometry(tokenizer_file: Path) -> None:
    module = tiny_module(tokenizer_file, kd={"mse_weight": 0.0, "cosine_weight": 0.0, "similarity_weight": 2.0})
    teacher = torch.randn(5, 16)
    scaled = 3.0 * teacher  # same cosines between sentences: no similarity loss, whatever the norm
    assert module.distill_loss(scaled, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(5, 16, requires_grad=True)
    loss = module.distill_loss(student, teacher)
    unit_s, unit_t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    expected = 2.0 * ((unit_s @ unit_s.T - unit_t @ unit_t.T) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="similarity_weight must be >= 0"):
        tiny_module(tokenizer_file, kd={"similarity_weight": -1.0})


def test_parallel_loss_adds_the_target_term(tokenizer_file: Path) -> None:
    student = tiny_module(tokenizer_file, seed=2)
    attach_teacher(student, tiny_module(tokenizer_file, seed=1))
    student.log = lambda *a, **k: None  # outside a Trainer
    src = tokenize(student.tokenizer, ["EU rejects lamb", "German call"], 32)
    tgt = tokenize(student.tokenizer, ["British lamb", "boycott German call ."], 32)
    batch = {**src, "index": torch.tensor([0, 1])}
    student.teacher_cache = student.teacher.encode(["EU rejects lamb", "German call"], normalized=False)
    alone = student.training_step(batch, 0)
    with_target = student.training_step({**batch, "target_input_ids": tgt["input_ids"],
                                         "target_attention_mask": tgt["attention_mask"]}, 0)
    extra = student.distill_loss(student.embed(**tgt), student.teacher_cache)
    torch.testing.assert_close(with_target, alone + extra)


def test_layer_dropped_student_aligns_hidden_states_and_reloads(tokenizer_file: Path, tmp_path: Path) -> None:
    teacher = tiny_module(tokenizer_file, seed=1)
    student = tiny_module(tokenizer_file, seed=1, keep_layers=[1], kd={"hidden_weight": 1.0})
    assert len(student.bert.layers) == 1 and student.resolved_hparams()["bert_config"]["num_hidden_layers"] == 1
    torch.testing.assert_close(student.bert.layers[0].ffn.fc1.weight, teacher.bert.layers[1].ffn.fc1.weight)
    attach_teacher(student, teacher)
    student.log = lambda *a, **k: None  # outside a Trainer
    batch = {**tokenize(student.tokenizer, ["EU rejects lamb", "German call to boycott"], 32), "index": torch.arange(2)}
    target, states = student._teacher_targets(batch)  # hidden alignment needs the live teacher
    assert states is not None and len(states) == 3
    pooled, own = student.embed(batch["input_ids"], batch["attention_mask"], hidden=True)
    real = batch["attention_mask"].bool()
    expected = student.distill_loss(pooled, target) + torch.nn.functional.mse_loss(own[1][real], states[2][real])
    torch.testing.assert_close(student.training_step(batch, 0), expected)
    path = tmp_path / "dropped.ckpt"
    save_like_lightning(student, path)
    reloaded = SentenceEncoderModule.load_from_checkpoint(path, weights_only=False).eval()
    assert len(reloaded.bert.layers) == 1
    torch.testing.assert_close(reloaded.encode(["EU rejects lamb"]), student.encode(["EU rejects lamb"]))


def test_equal_speed_comparison_interpolates_the_layer_dropping_curve() -> None:
    def row(name: str, b16_ms: float, quality: float, **extra) -> dict:
        return {"name": name, "latency_ms": {"16": b16_ms, "64": 4 * b16_ms}, "quality_vs_teacher": quality, **extra}
    rows = [row("teacher", 32.0, 100.0), row("pruned + distilled", 20.0, 99.0),  # 1.6x
            row("layers [0, 2, 3, 5] kept + distilled", 32.0 / 1.5, 99.5, kept_layers=[0, 2, 3, 5]),
            row("layers [0, 2, 4] kept + distilled", 16.0, 97.5, kept_layers=[0, 2, 4])]
    equal = equal_speed_comparison(rows)
    assert equal["speedup"] == pytest.approx(1.6)
    assert equal["layer_dropping_quality_at_equal_speed"] == pytest.approx(99.1)  # 99.5 - 0.2 * 2.0
    assert equal["beats_layer_dropping"] is False
    rows[1]["latency_ms"]["64"] = 4 * 32.0 / 1.2  # at batch 64 the pruned model is slower: 1.2x
    assert equal_speed_comparison(rows, 64)["layer_dropping_quality_at_equal_speed"] == pytest.approx(99.8)
    table = markdown_table({"rows": rows, "latency_batch_sizes": [16, 64]})
    assert "keeps 99.10 %" in table and "(does not beat it)" in table and "keeps 99.80 %" in table
    rows[1]["latency_ms"]["16"] = 32.0 / 2.2  # faster than every layer-dropping row and better than the fastest
    equal = equal_speed_comparison(rows)
    assert equal["beats_layer_dropping"] is True and equal["layer_dropping_quality_at_equal_speed"] is None
    assert equal["dominates"] == {"name": "layers [0, 2, 4] kept + distilled", "speedup": 2.0,
                                  "quality_vs_teacher": 97.5}
    assert "faster and better than the fastest layer-dropping row" in markdown_table(
        {"rows": rows, "latency_batch_sizes": [16]})
    rows[1]["quality_vs_teacher"] = 97.0  # faster but worse: no extrapolated verdict
    assert equal_speed_comparison(rows)["beats_layer_dropping"] is None
    assert "outside the measured layer-dropping range" in markdown_table({"rows": rows, "latency_batch_sizes": [16]})
    assert equal_speed_comparison(rows[:2]) is None  # no layer-dropping row at all


def test_bad_inputs_give_one_clear_error(tokenizer_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a b,c d,3.5\nonly,two\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: expected 3 columns"):
        read_sts(bad)
    bad.write_text("a b,c d,3.5\na,b,5.0\nx,y,7\n")
    with pytest.raises(ValueError, match=rf"{bad}:3: score 7.0 is outside 0.0-5.0"):
        read_sts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="has no sentences"):
        read_sentences(empty)
    with pytest.raises(ValueError, match="leave nothing"):
        neurons_to_keep([torch.rand(4)], 1.0)
    with pytest.raises(ValueError, match="every head"):
        check_config(PipelineConfig(train_files=[], sts_files={"en": "x"}, score_file="x", prune_heads=1.0))
    other = BertWordPieceTokenizer(lowercase=True)
    other.train_from_iterator(["a completely different corpus of words"] * 3, vocab_size=120, show_progress=False)
    other_path = tmp_path / "other.json"
    other.save(str(other_path))
    student = tiny_module(other_path)
    attach_teacher(student, tiny_module(tokenizer_file))
    with pytest.raises(ValueError, match="different tokenizer vocabularies"):
        student.setup("fit")


def test_each_student_is_distilled_from_a_fresh_seed(tokenizer_file: Path, tmp_path: Path) -> None:
    """With dropout on, the same student comes out of `distil` whatever random numbers were drawn before it,
    so a pipeline row does not depend on which baselines were distilled first."""
    dm = tiny_datamodule(tokenizer_file, tmp_path, 48)
    teacher = tiny_module(tokenizer_file, seed=1)
    cache = teacher.encode(dm.sentences, normalized=False)
    sts = dm.hparams.sts_files["en"]
    cfg = PipelineConfig(train_files=dm.hparams.train_files, sts_files={"en": sts}, score_file=sts, epochs=1,
                         peak_lr=1e-2, output_dir=str(tmp_path / "out"))
    config = {**TINY, "vocab_size": load_tokenizer(tokenizer_file).get_vocab_size(), "hidden_dropout_prob": 0.3}
    weights = []
    for draws in (0, 1000):
        torch.manual_seed(2)
        student = SentenceEncoderModule(bert_config=config, data_spec=dm.spec())
        attach_teacher(student, teacher)
        torch.rand(draws)  # e.g. a random-init baseline distilled before this student
        distil(student, dm, cfg, f"draws{draws}", cache)
        weights.append(student.bert.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_pipeline_end_to_end_on_a_tiny_hf_teacher(tokenizer_file: Path, tmp_path: Path) -> None:
    """score -> prune -> distil -> report on a tiny HF-format folder: the rows asked for, a student that
    reloads alone with the pruned shape, JSON and markdown written."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    shutil.copy(tokenizer_file, folder / "tokenizer.json")
    vocab = load_tokenizer(tokenizer_file).get_vocab_size()
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**{**TINY, "vocab_size": vocab}), add_pooling_layer=False)
    (folder / "config.json").write_text(json.dumps(hf.config.to_dict()))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, folder / "model.safetensors")
    dm = tiny_datamodule(tokenizer_file, tmp_path, 32)
    sts = dm.hparams.sts_files["en"]
    cfg = PipelineConfig(train_files=dm.hparams.train_files, sts_files={"en": sts}, score_file=sts, score_pairs=16,
                         teacher=str(folder), prune_heads=0.5, prune_ffn=0.5, max_length=32, batch_size=16,
                         epochs=1, random_init_baseline=False, drop_layers_keep=[[1]], latency_batch_sizes=[1, 16],
                         latency_repeats=1, output_dir=str(tmp_path / "out"))
    report = run_pipeline(cfg)
    names = [row["name"] for row in report["rows"]]
    assert names == ["teacher", "pruned, no distillation", "pruned + distilled", "layers [1] kept + distilled"]
    assert all(set(row["latency_ms"]) == {"1", "16"} and "spearman_en" in row for row in report["rows"])
    assert report["rows"][2]["params"] < report["rows"][0]["params"]
    assert json.loads((tmp_path / "out/report.json").read_text())["rows"][3]["kept_layers"] == [1]
    assert "layers [1] kept + distilled" in (tmp_path / "out/report.md").read_text()
    student = SentenceEncoderModule.load_from_checkpoint(tmp_path / "out/student.ckpt", weights_only=False).eval()
    heads = [layer.self_attn.num_heads for layer in student.bert.layers]
    assert heads == report["rows"][2]["heads_per_layer"] and sum(heads) == 4


@pytest.mark.slow
@requires_data
def test_real_sts_dev_slice_evaluates_with_minilm() -> None:
    pairs = read_sts(DATA / "stsb/stsb-en-dev.csv")[:64]
    assert len(pairs) == 64 and all(0 <= p.score <= 5 for p in pairs)
    model = SentenceEncoderModule(checkpoint_dir=str(default_checkpoint_dir())).eval()
    score = evaluate_sts(model, pairs)
    assert 80 < score <= 100  # all-MiniLM-L6-v2 is a strong STS model; a broken pooling scores far lower
    conll = read_sentences(DATA / "conll2003/eng.testa")
    assert conll[0] == "CRICKET - LEICESTERSHIRE TAKE OVER AT TOP AFTER INNINGS VICTORY ."
