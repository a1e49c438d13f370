"""prune_heads.py: taylor / random / gates pruning of NMT and NER checkpoints, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
from conftest import REPO, requires_data, save_like_lightning, tiny_nmt_args
from tokenizers.implementations import BertWordPieceTokenizer

from compression.gates import attached_gates, detach_gates
from compression.heads import attention_modules
from compression.prune import head_config
from compression.pruning_pipeline import REPORT_KEYS
from core.cli import main as train_main
from ner.module import TaggerModule
from nmt.module import TranslationModule
from prune_heads import main as prune_main

ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
BERT = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
FAST = ["--batch_sizes", "1,2", "--latency_repeats", "1", "--seq_len", "6"]


def save(module: lightning.LightningModule, path: Path) -> Path:
    """The model part of a Lightning checkpoint, written through the module's own hook."""
    save_like_lightning(module, path)
    return path


def batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(4, vocab, (3, 7), generator=g), torch.randint(4, vocab, (3, 5), generator=g)


def masked_like(original: torch.nn.Module, pruned: torch.nn.Module) -> None:
    """Set head masks on `original` that zero every head `pruned` no longer has."""
    cfg = head_config(pruned)
    for kind, attns in attention_modules(original).items():
        for attn, kept in zip(attns, cfg[kind], strict=True):
            mask = torch.zeros(attn.num_heads)
            mask[kept] = 1.0
            attn.head_mask = mask


@pytest.fixture(scope="module")
def trained_nmt(multi30k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TranslationModule checkpoint after 2 training steps on the Multi30k slice."""
    run = tmp_path_factory.mktemp("nmt_run")
    cli = train_main(tiny_nmt_args(multi30k_slice, run, "--trainer.max_steps", "2", "--test", "false",
                                   "--trainer.limit_val_batches", "0"))
    return Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"


@pytest.mark.slow
@requires_data
@pytest.mark.parametrize("method,target,expected", [
    ("taylor", "encoder_self=3,decoder_cross=0.5", {"encoder_self": 5, "decoder_self": 8, "decoder_cross": 4}),
    ("random", "5", None),
])
def test_nmt_pruning_reloads_with_requested_heads_and_equals_masking(
        trained_nmt, multi30k_slice, tmp_path, method, target, expected):
    out = tmp_path / "pruned.ckpt"
    d = multi30k_slice
    report = prune_main(["--ckpt", str(trained_nmt), "--method", method, "--prune", target, "--output", str(out),
                         "--score_data", str(d / "train.en"), str(d / "train.de"), "--score_sentences", "16",
                         "--eval_data", str(d / "test_2016_flickr.en"), str(d / "test_2016_flickr.de"),
                         "--beam_size", "1", *FAST])
    pruned = TranslationModule.load_from_checkpoint(out, map_location="cpu", weights_only=False).eval()
    counts = {k: sum(a.num_heads for a in attns) for k, attns in attention_modules(pruned.model).items()}
    if expected is None:
        assert sum(counts.values()) == 24 - 5
    else:
        assert counts == expected
    assert pruned.vocab is not None and not attached_gates(pruned.model)
    original = TranslationModule.load_from_checkpoint(trained_nmt, map_location="cpu", weights_only=False).eval()
    masked_like(original.model, pruned.model)
    src, tgt = batch(original.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(src, tgt), original.model(src, tgt), atol=1e-5, rtol=1e-5)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert set(REPORT_KEYS) <= set(saved) and saved == json.loads(json.dumps(report, default=str))
    assert set(saved["size"]["before"]) >= {"params", "flops_per_token", "latency_ms"}
    assert set(saved["size"]["before"]["latency_ms"]) == {"1", "2"}
    assert saved["size"]["after"]["params"]["total"] < saved["size"]["before"]["params"]["total"]
    assert saved["size"]["after"]["flops_per_token"] < saved["size"]["before"]["flops_per_token"]
    assert {"bleu", "chrf"} <= set(saved["quality"]["before"]) and "bleu" in saved["quality"]["after"]
    assert saved["heads"]["after"] == {k: [a.num_heads for a in v] for k, v in attention_modules(pruned.model).items()}
    assert "| encoder_self |" in out.with_suffix(".md").read_text()


def gated_nmt(tmp_path: Path) -> tuple[Path, TranslationModule]:
    torch.manual_seed(0)
    module = TranslationModule(arch=ARCH, data_spec=DATA_SPEC,
                               gates={"types": ["encoder_self", "decoder_cross"], "l0_lambda": 0.05})
    with torch.no_grad():
        for layers in attached_gates(module.model).values():
            for g in layers:
                g.log_alpha.normal_(0.0, 2.0)
    return save(module, tmp_path / "gated.ckpt"), module.eval()


def test_gates_threshold_removes_gates_and_keeps_gated_outputs(tmp_path):
    path, gated = gated_nmt(tmp_path)
    out = tmp_path / "pruned.ckpt"
    report = prune_main(["--ckpt", str(path), "--method", "gates", "--gate_threshold", "0.5", "--output", str(out),
                         *FAST])
    expected = {k: [[h for h, v in enumerate(g.eval()().tolist()) if v > 0.5] for g in layers]
                for k, layers in attached_gates(gated.model).items()}
    pruned = TranslationModule.load_from_checkpoint(out, map_location="cpu", weights_only=False).eval()
    assert not attached_gates(pruned.model) and pruned.hparams.gates is None
    cfg = head_config(pruned.model)
    assert {k: cfg[k] for k in expected} == expected and cfg["decoder_self"] == [[0, 1, 2, 3]] * 2
    assert report["heads"]["kept"] == cfg
    # reference: the gated model at eval with the heads at or below the threshold masked to 0
    masks = {k: [g.eval()().detach() for g in layers] for k, layers in detach_gates(gated.model).items()}
    for kind, values in masks.items():
        for attn, v in zip(attention_modules(gated.model)[kind], values, strict=True):
            attn.head_mask = v * (v > 0.5)
    src, tgt = batch(50)
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(src, tgt), gated.model(src, tgt), atol=1e-5, rtol=1e-5)
    assert report["quality"] == {"before": None, "after": None}


def test_ner_taylor_pruning_with_f1(tmp_path):
    tok = BertWordPieceTokenizer(lowercase=False)
    text = "EU rejects German call to boycott British lamb . Peter Blackburn visits Paris"
    tok.train_from_iterator([text] * 3, vocab_size=120, show_progress=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    tagger = TaggerModule(bert_config=BERT, dropout=0.0,
                          data_spec={"labels": LABELS, "tokenizer": str(tmp_path / "tokenizer.json")})
    path = save(tagger, tmp_path / "ner.ckpt")
    conll = tmp_path / "dev.txt"
    conll.write_text("Peter B-PER\nBlackburn I-PER\nvisits O\nParis B-LOC\n\nEU O\nrejects O\nlamb O\n\n")
    out = tmp_path / "ner_pruned.ckpt"
    report = prune_main(["--ckpt", str(path), "--method", "taylor", "--prune", "bert_self=3",
                         "--score_data", str(conll),
                         "--eval_data", str(conll), "--output", str(out), *FAST])
    pruned = TaggerModule.load_from_checkpoint(out, map_location="cpu", weights_only=False).eval()
    assert sum(a.num_heads for a in attention_modules(pruned.bert)["bert_self"]) == 5
    assert report["task"] == "ner" and 0.0 <= report["quality"]["after"]["f1"] <= 1.0
    masked_like(tagger.bert, pruned.bert)
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, torch.ones_like(ids)), tagger.eval()(ids, torch.ones_like(ids)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--method", "gates", "--gate_threshold", "0.5"], "has no head gates"),
    (["--method", "random", "--prune", "25"], "cannot prune 25 heads, the model has only 24"),
    (["--method", "random", "--prune", "encoder_self=9"], "cannot prune 9 heads, the model has only 8"),
    (["--method", "random", "--prune", "encoder_sef=1"], "unknown attention type"),
    (["--method", "random", "--prune", "bert_self=1"], "model has no attention of type"),
    (["--method", "taylor", "--prune", "0.5"], "taylor scoring of a 'nmt' checkpoint needs 2 file"),
    (["--method", "taylor", "--prune", "0.5", "--score_data", "nope.en", "nope.de"], "does not exist"),
    (["--method", "random", "--gate_threshold", "0.5"], "only applies to --method gates"),
])
def test_bad_input_is_one_clear_error(tmp_path, args, message):
    torch.manual_seed(0)
    path = save(TranslationModule(arch=ARCH, data_spec=DATA_SPEC), tmp_path / "dense.ckpt")
    with pytest.raises(ValueError, match=message):
        prune_main(["--ckpt", str(path), "--output", str(tmp_path / "out.ckpt"), *args, *FAST])
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.slow
@requires_data
def test_gate_fine_tuned_run_pruned_by_gate_ranking(trained_nmt, multi30k_slice, tmp_path):
    # A real gate fine-tuning run (init_from + gate_types + L0 + heatmap), then a count target
    # ranked by the gates; the pruned checkpoint has no gates and reloads alone.
    run = tmp_path / "gated_run"
    cli = train_main(tiny_nmt_args(
        multi30k_slice, run, "--trainer.max_steps", "2", "--test", "false", "--trainer.limit_val_batches", "0",
        "--model.init_args.init_from", str(trained_nmt), "--model.init_args.gates.types", "[encoder_self]",
        "--model.init_args.gates.l0_lambda", "0.05", "--trainer.callbacks+=compression.heatmap.GateHeatmap"))
    gated = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    out = tmp_path / "pruned.ckpt"
    report = prune_main(["--ckpt", str(gated), "--method", "gates", "--prune", "encoder_self=6", "--output", str(out),
                         *FAST])
    pruned = TranslationModule.load_from_checkpoint(out, map_location="cpu", weights_only=False)
    assert [a.num_heads for a in attention_modules(pruned.model)["encoder_self"]] == report["heads"]["after"][
        "encoder_self"] and sum(report["heads"]["after"]["encoder_self"]) == 2
    assert not attached_gates(pruned.model) and pruned.hparams.gates is None


def test_command_line_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prune_heads.py", "--ckpt", str(tmp_path / "missing.ckpt"), "--method", "random",
                                     "--prune", "1", "--output", str(tmp_path / "o.ckpt")])
    with pytest.raises(SystemExit, match=r"^prune_heads.py: error: checkpoint .* does not exist$"):
        prune_main()


@pytest.mark.slow
@requires_data
def test_finetune_epochs_trains_the_pruned_checkpoint_and_reports_its_bleu(trained_nmt, multi30k_slice, tmp_path):
    out = tmp_path / "pruned.ckpt"
    extra = " ".join(tiny_nmt_args(multi30k_slice, tmp_path / "ft")[2:6]) + " --trainer.max_steps 2"  # data flags
    test_src, test_ref = multi30k_slice / "test_2016_flickr.en", multi30k_slice / "test_2016_flickr.de"
    report = prune_main(["--ckpt", str(trained_nmt), "--method", "random", "--prune", "encoder_self=0.5",
                         "--output", str(out), "--eval_data", str(test_src), str(test_ref),
                         "--beam_size", "1", "--finetune_epochs", "1", "--finetune_config",
                         str(REPO / "tests/fixtures/nmt_tiny.yaml"), "--finetune_args", extra, *FAST])
    tuned = TranslationModule.load_from_checkpoint(report["finetuned_checkpoint"], map_location="cpu",
                                                   weights_only=False)
    assert head_config(tuned.model) == report["heads"]["kept"]  # the pruned layout was trained, not a dense model
    assert set(report["quality"]) == {"before", "after", "finetuned"} and "bleu" in report["quality"]["finetuned"]
    assert json.loads(out.with_suffix(".json").read_text())["finetune_epochs"] == 1


def test_finetune_without_config_fails_before_pruning(tmp_path):
    with pytest.raises(ValueError, match="--finetune_config"):
        prune_main(["--ckpt", str(tmp_path / "x.ckpt"), "--method", "random", "--prune", "1",
                    "--output", str(tmp_path / "o.ckpt"), "--finetune_epochs", "1"])


def test_sentence_encoder_taylor_pruning_with_spearman(tmp_path, tokenizer_file):
    # The third task through the same command: STS pairs score the heads, Spearman before/after.
    from core.hf_import import load_tokenizer
    from sts.module import SentenceEncoderModule

    torch.manual_seed(0)
    config = {**BERT, "vocab_size": load_tokenizer(tokenizer_file).get_vocab_size()}
    encoder = SentenceEncoderModule(bert_config=config, data_spec={"tokenizer": str(tokenizer_file), "max_length": 16})
    path = save(encoder, tmp_path / "sts.ckpt")
    words = "EU rejects German call to boycott British lamb".split()
    rows = [f"{' '.join(words[i:i + 3])},{' '.join(words[i + 1:i + 5])},{i % 5}.0" for i in range(5)]
    csv = tmp_path / "sts.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "sts_pruned.ckpt"
    report = prune_main(["--ckpt", str(path), "--method", "taylor", "--prune", "0.5", "--score_data", str(csv),
                         "--eval_data", str(csv), "--output", str(out), *FAST])
    assert report["task"] == "sts" and -100 <= report["quality"]["after"]["spearman"] <= 100
    pruned = SentenceEncoderModule.load_from_checkpoint(out, map_location="cpu", weights_only=False).eval()
    assert sum(a.num_heads for a in attention_modules(pruned.bert)["bert_self"]) == 4
    masked_like(encoder.bert, pruned.bert)
    ids = torch.randint(5, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, torch.ones_like(ids)), encoder.eval()(ids, torch.ones_like(ids)),
                                   atol=1e-5, rtol=1e-5)


def test_checkpoint_without_task_needs_task_flag(tmp_path):
    # Files written before tasks were recorded: one clear error, and --task opens them.
    torch.manual_seed(0)
    path = tmp_path / "old.ckpt"
    ckpt = save_like_lightning(TranslationModule(arch=ARCH, data_spec=DATA_SPEC), path)
    del ckpt["task"]
    torch.save(ckpt, path)
    args = ["--ckpt", str(path), "--output", str(tmp_path / "out.ckpt"), "--method", "random", "--prune", "2", *FAST]
    with pytest.raises(ValueError, match="records no task.*--task nmt"):
        prune_main(args)
    assert prune_main([*args, "--task", "nmt"])["task"] == "nmt"
