"""The tagger: a tiny BERT overfits real CoNLL sentences, checkpoints are self-contained, train.py runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import save_like_lightning
from tokenizers.implementations import BertWordPieceTokenizer

from core.cli import main as train_main
from core.data_dir import REPO_ROOT
from core.schedules import TriangleSchedule
from core.swa import SWA
from ner.conll import read_conll, to_iob2
from ner.data import CoNLLDataModule
from ner.module import TaggerModule, entity_scores, score_conll
from ner.predict import predict_file

# Where CoNLLDataModule looks by default: $DATA_DIR, else ../shared/data beside the repo.
CONLL = Path(os.environ.get("DATA_DIR") or REPO_ROOT.parent / "shared" / "data") / "conll2003"
needs_data = pytest.mark.skipif(not CONLL.exists() and not os.environ.get("CI"),
                                reason=f"CoNLL-2003 not at {CONLL} (required under CI)")


def tiny_bert_config(vocab_size: int) -> dict:
    # No dropout: the overfitting test needs a deterministic fit.
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                max_position_embeddings=128)


@pytest.fixture
def one_thread():
    """Tiny models run many small ops: one thread avoids contention (10x faster on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece vocabulary from a few crafted sentences (tests that need no real data)."""
    tokenizer = BertWordPieceTokenizer(lowercase=False)
    text = ["EU rejects German call to boycott British lamb .", "Peter Blackburn visited Brussels ."]
    tokenizer.train_from_iterator(text * 3, vocab_size=120, show_progress=False)
    path = tmp_path_factory.mktemp("vocab") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """32 real training sentences as train/dev/test, and a WordPiece vocab built from them."""
    root = tmp_path_factory.mktemp("tiny")
    blocks = [b for b in (CONLL / "eng.train").read_text().split("\n\n")
              if b.strip() and not b.startswith("-DOCSTART-")][:32]
    (root / "conll2003").mkdir()
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (root / "conll2003" / name).write_text("\n\n".join(blocks) + "\n")
    sentences, _ = to_iob2(read_conll(root / "conll2003" / "eng.train"))
    tokenizer = BertWordPieceTokenizer(lowercase=False)
    text = [" ".join(s.tokens) for s in sentences]
    tokenizer.train_from_iterator(text, vocab_size=400, show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    return {"root": root, "tokenizer": root / "tokenizer.json", "sentences": sentences,
            "config": tiny_bert_config(tokenizer.get_vocab_size())}


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_tiny_tagger_overfits_then_reloads_identically(tiny: dict, tmp_path: Path, one_thread, crf: bool) -> None:
    tokenizer_file = shutil.copy(tiny["tokenizer"], tmp_path / "tokenizer.json")
    dm = CoNLLDataModule(dir=str(tiny["root"]), tokenizer=str(tokenizer_file), batch_size=8)
    L.seed_everything(0)
    model = TaggerModule(bert_config=tiny["config"], dropout=0.0, optimizer={"weight_decay": 0.0}, data_spec=dm.spec(),
                         crf=crf)
    trainer = quiet_trainer(max_steps=400, limit_val_batches=0, num_sanity_val_steps=0,
                            callbacks=[TriangleSchedule(peak_lr=3e-3, warmup=0.1)])
    trainer.fit(model, dm)
    [scores] = quiet_trainer().validate(model, dm, verbose=False)
    assert scores["val/f1"] == 1.0
    assert sorted(k for k in scores if k.startswith("val/f1_")) == [
        "val/f1_LOC", "val/f1_MISC", "val/f1_ORG", "val/f1_PER"]

    words = [s.tokens for s in tiny["sentences"]]
    predicted = model.tag(words, batch_size=5)
    assert predicted == [s.tags for s in tiny["sentences"]]  # the tag() path agrees with evaluation

    path = tmp_path / "tagger.ckpt"
    trainer.save_checkpoint(path)
    os.remove(tokenizer_file)  # the checkpoint alone must be enough
    reloaded = TaggerModule.load_from_checkpoint(path, weights_only=False)
    assert reloaded.tag(words, batch_size=7) == predicted
    if crf:  # learned transitions travel in the checkpoint
        assert model.crf.transitions.abs().max() > 0
        assert torch.equal(reloaded.crf.transitions, model.crf.transitions)
    else:  # a perfect fit is already a valid IOB2 path: constrained Viterbi keeps it
        reloaded.hparams.constrained_decoding = True
        assert reloaded.tag(words, batch_size=7) == predicted
    from_file = score_conll(reloaded, tiny["root"] / "conll2003" / "eng.testa")  # the file path, IOB1 read again
    assert from_file["f1"] == 1.0 and from_file["sentences"] == len(words)
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch["input_ids"], batch["attention_mask"], batch["casing"]),
                           model(batch["input_ids"], batch["attention_mask"], batch["casing"]))


class _EpochSnapshots(L.Callback):
    def __init__(self) -> None:
        self.weights: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})


@needs_data
def test_swa_averages_the_whole_tagger_not_its_teacher(tiny: dict, tmp_path: Path, one_thread) -> None:
    """The SWA callback averages every registered part of a tagger (encoder, casing embedding,
    head); its integer buffers stay as they are and a KD teacher is left out."""
    dm = CoNLLDataModule(dir=str(tiny["root"]), tokenizer=str(tiny["tokenizer"]), batch_size=8)
    L.seed_everything(0)
    teacher_path = tmp_path / "teacher.ckpt"
    save_like_lightning(TaggerModule(bert_config=tiny["config"], casing=True, data_spec=dm.spec()), teacher_path)
    model = TaggerModule(bert_config=tiny["config"], casing=True, data_spec=dm.spec(),
                         kd={"teacher": str(teacher_path)})
    snaps = _EpochSnapshots()
    quiet_trainer(max_epochs=4, limit_val_batches=0, num_sanity_val_steps=0,
                  callbacks=[TriangleSchedule(peak_lr=3e-3, warmup=1), snaps, SWA(last_fraction=0.5)]).fit(model, dm)
    final = model.state_dict()
    assert final.keys() == snaps.weights[3].keys()  # the teacher is not in the state dict
    for name, value in final.items():  # snapshots at the end of epochs 2 and 3 (0-based)
        if value.is_floating_point():
            torch.testing.assert_close(value, (snaps.weights[2][name] + snaps.weights[3][name]) / 2)
        else:
            assert torch.equal(value, snaps.weights[3][name])
    assert not torch.equal(final["head.weight"], snaps.weights[3]["head.weight"])
    assert not torch.equal(final["casing_embed.weight"], snaps.weights[3]["casing_embed.weight"])


def test_entity_scores_are_word_level_seqeval() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    scores = entity_scores(gold, pred, ["O", "B-PER", "I-PER", "B-LOC", "B-ORG", "B-MISC"])
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1_PER"] == 1.0 and scores["f1_ORG"] == 1.0 and scores["f1_LOC"] == 0.0
    assert scores["f1_MISC"] == 0.0  # predicted but never gold: a type of the label list still gets a score


def test_casing_embedding_starts_as_a_no_op(tiny_tokenizer: Path) -> None:
    spec = {"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tiny_tokenizer)}
    config = tiny_bert_config(120)
    plain = TaggerModule(bert_config=config, data_spec=spec).eval()
    cased = TaggerModule(bert_config=config, casing=True, data_spec=spec).eval()
    cased.load_state_dict({**plain.state_dict(), "casing_embed.weight": cased.casing_embed.weight})
    ids, casing = torch.randint(5, 100, (2, 7)), torch.randint(0, 6, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(plain(ids, mask, casing), cased(ids, mask, casing))


def test_no_weight_decay_on_bias_and_layernorm(tiny_tokenizer: Path) -> None:
    spec = {"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tiny_tokenizer)}
    model = TaggerModule(bert_config=tiny_bert_config(120), optimizer={"weight_decay": 0.01}, data_spec=spec)
    decay, no_decay = model.configure_optimizers().param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    decayed = [names[id(p)] for p in decay["params"]]
    assert all(not n.endswith("bias") and "norm" not in n.lower() for n in decayed)
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_crf_scores_train_undecayed_at_a_scaled_rate(tiny_tokenizer: Path) -> None:
    spec = {"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tiny_tokenizer)}
    model = TaggerModule(bert_config=tiny_bert_config(120), data_spec=spec, optimizer={"lr": 1e-4}, crf=True,
                         crf_lr_scale=50.0)
    *encoder_groups, crf_group = model.configure_optimizers().param_groups
    assert {id(p) for p in crf_group["params"]} == {id(p) for p in model.crf.parameters()}
    assert crf_group["weight_decay"] == 0.0 and crf_group["lr"] == pytest.approx(5e-3)
    assert crf_group["lr_scale"] == 50.0  # schedule callbacks keep the ratio
    assert sum(len(g["params"]) for g in encoder_groups) == len(list(model.parameters())) - 3


def test_word_embedding_rows_train_undecayed_at_a_scaled_rate(tiny_tokenizer: Path) -> None:
    spec = {"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tiny_tokenizer)}
    for rank in (None, 8):  # the dense table, and the rows (not the projection) of a factorised one
        model = TaggerModule(bert_config=tiny_bert_config(120), data_spec=spec, optimizer={"lr": 1e-4},
                             embedding_lr_scale=20.0, student={"factorize_embedding_rank": rank})
        words = model.bert.embeddings.word_embeddings
        *others, rows = model.configure_optimizers().param_groups
        assert [id(p) for p in rows["params"]] == [id(getattr(words, "table", words).weight)]
        assert rows["weight_decay"] == 0.0 and rows["lr"] == pytest.approx(2e-3) and rows["lr_scale"] == 20.0
        assert sum(len(g["params"]) for g in others) == len(list(model.parameters())) - 1
    default = TaggerModule(bert_config=tiny_bert_config(120), data_spec=spec).configure_optimizers()
    assert len(default.param_groups) == 2  # scale 1: the table trains with the rest


def test_module_errors(tiny_tokenizer: Path) -> None:
    with pytest.raises(ValueError, match="needs data_spec with 'labels'"):
        TaggerModule(bert_config=tiny_bert_config(120))
    # Default MiniLM weights with the tiny vocabulary: caught before the first step.
    model = TaggerModule(data_spec={"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tiny_tokenizer)})
    with pytest.raises(ValueError, match="word embeddings have 30522 rows"):
        model.setup("fit")


@pytest.mark.slow
@needs_data
def test_train_py_end_to_end_then_predict(tiny: dict, tmp_path: Path, one_thread) -> None:
    config = {
        "seed_everything": 1,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "gradient_clip_val": 1.0,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs"),
                    "callbacks": [{"class_path": "core.schedules.TriangleSchedule",
                                   "init_args": {"peak_lr": 1e-3, "warmup": 0.1}}]},
        "model": {"class_path": "ner.module.TaggerModule",
                  "init_args": {"bert_config": tiny["config"], "casing": True}},
        "data": {"class_path": "ner.data.CoNLLDataModule",
                 "init_args": {"dir": str(tiny["root"]), "tokenizer": str(tiny["tokenizer"]),
                               "batch_size": 4}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = train_main(["--config", str(path), "--trainer.max_steps", "5", "--trainer.limit_val_batches", "2"])
    assert cli.trainer.global_step == 5
    assert "test/f1" in cli.trainer.callback_metrics
    run = Path(cli.trainer.log_dir)
    assert (run / "run_record.json").is_file()
    checkpoint = run / "checkpoints" / "last.ckpt"
    text = tmp_path / "raw.txt"
    text.write_text("EU rejects German call to boycott British lamb .\n\nPeter Blackburn\n")
    assert predict_file(checkpoint, text, tmp_path / "out.conll") == 2
    lines = (tmp_path / "out.conll").read_text().split("\n")
    assert lines[0].split()[0] == "EU" and lines[9] == "" and lines[10].startswith("Peter ")
    conll_in = tiny["root"] / "conll2003" / "eng.testb"
    assert predict_file(checkpoint, conll_in, tmp_path / "out2.conll") == 32
    first = (tmp_path / "out2.conll").read_text().split("\n")[0].split()
    assert first[:2] == ["EU", "B-ORG"] and len(first) == 3
    # An undertrained tagger: constrained decoding must still give valid IOB2 (I-X only after B-X / I-X).
    assert predict_file(checkpoint, conll_in, tmp_path / "out3.conll", constrained=True) == 32
    previous = "O"
    for line in (tmp_path / "out3.conll").read_text().split("\n"):
        tag = line.split()[-1] if line else "O"
        assert not tag.startswith("I-") or previous[2:] == tag[2:], (previous, tag)
        previous = tag
