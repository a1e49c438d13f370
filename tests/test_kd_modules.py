"""Knowledge distillation owned by TranslationModule / TaggerModule, on tiny models.

The teacher is a checkpoint of the same module class; the student's KD loss equals the formula
computed by hand from both models' logits; the teacher is frozen, in eval mode during fit and
absent from the student's state dict and checkpoint; the student reloads without the teacher file.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BERT, TINY_LABELS, save_like_lightning, tiny_ner_batch, tiny_tagger
from torch.utils.data import DataLoader

from compression.factorize import FactorizedEmbedding
from compression.sharing import SharedLayerStack
from compression.spec import SPEC_KEY
from compression.student import TEACHER_ATTR
from ner.module import TaggerModule
from nmt.module import TranslationModule

DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
STUDENT_ARCH = {**ARCH, "d_model": 8, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1}
BERT = TINY_BERT
STUDENT_BERT = {**BERT, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 12}
LABELS = TINY_LABELS
FIT = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
           enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, max_steps=2)


def by_hand(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, ignore: int, alpha: float,
            temperature: float, smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * mean_real KL(p_teacher || p_student) + (1 - alpha) * CE, written out."""
    real = labels != ignore
    s, t, y = student[real], teacher[real], labels[real]
    p_t = torch.softmax(t / temperature, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / temperature, -1))).sum(-1).mean()
    ce = F.cross_entropy(s, y, label_smoothing=smoothing)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


class TeacherProbe(L.Callback):
    """Records, at every training batch, whether the teacher is frozen, in eval mode and unoptimised."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        teacher = pl_module.teacher
        optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.seen.append((not teacher.training and not any(m.training for m in teacher.modules()),
                          not any(p.requires_grad for p in teacher.parameters()),
                          not optimised & {id(p) for p in teacher.parameters()}))


# --- NMT ---------------------------------------------------------------------------------------

def nmt_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 50, (3, 7), generator=g)
    src[1, 5:] = 0
    tgt = torch.randint(4, 50, (3, 6), generator=g)
    tgt[2, 4:] = 0
    return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}


@pytest.fixture
def nmt_teacher(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "nmt_teacher.ckpt"
    save_like_lightning(TranslationModule(arch=ARCH, data_spec=DATA_SPEC), path)
    return path


def nmt_student(teacher: Path | None, kd: dict | None = None, **kw) -> TranslationModule:
    torch.manual_seed(1)
    kd = {"teacher": str(teacher) if teacher else None, **(kd or {})}
    return TranslationModule(arch=STUDENT_ARCH, data_spec=DATA_SPEC, kd=kd, **kw)


def test_nmt_kd_loss_is_the_formula_on_both_models_logits(nmt_teacher: Path) -> None:
    student = nmt_student(nmt_teacher, kd={"alpha": 0.3, "temperature": 3.0}, label_smoothing=0.1)
    b = nmt_batch()
    loss, ntokens = student.training_loss(b)
    assert ntokens == int((b["tgt_out"] != 0).sum())
    with torch.no_grad():
        t = student.teacher.model(b["src"], b["tgt_in"])
    expected = by_hand(student.model(b["src"], b["tgt_in"]), t, b["tgt_out"], 0, 0.3, 3.0, smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in student.teacher.parameters())


def test_nmt_without_teacher_keeps_label_smoothed_ce() -> None:
    student = nmt_student(None, label_smoothing=0.1)
    b = nmt_batch()
    loss, _ = student.training_loss(b)
    expected = F.cross_entropy(student.model(b["src"], b["tgt_in"]).flatten(0, 1), b["tgt_out"].flatten(),
                               ignore_index=0, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)


def test_nmt_teacher_frozen_outside_checkpoint_and_student_reloads_alone(nmt_teacher: Path, tmp_path: Path) -> None:
    student = nmt_student(nmt_teacher)
    assert student.state_dict().keys() == nmt_student(None).state_dict().keys()
    assert TEACHER_ATTR not in dict(student.named_children())
    probe = TeacherProbe()
    trainer = L.Trainer(callbacks=[probe], **FIT)
    trainer.fit(student, DataLoader([nmt_batch()] * 2, batch_size=None))
    assert probe.seen == [(True, True, True)] * 2
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["kd"] is None
    assert not any("teacher" in k for k in ckpt["state_dict"])
    nmt_teacher.unlink()
    loaded = TranslationModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False)
    assert loaded.teacher is None
    student.eval()
    loaded.eval()
    b = nmt_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(b["src"], b["tgt_in"]), student.model(b["src"], b["tgt_in"]))
    assert loaded.translate(b["src"], 1) == student.translate(b["src"], 1)


def test_nmt_vocab_mismatch_and_bad_kd_hparams(nmt_teacher: Path) -> None:
    with pytest.raises(ValueError, match=r"share the vocabulary \(vocab_size: teacher 50 vs student 60\)"):
        TranslationModule(arch=STUDENT_ARCH, data_spec={**DATA_SPEC, "vocab_size": 60},
                          kd={"teacher": str(nmt_teacher)})
    student = nmt_student(nmt_teacher)
    student.teacher.vocab = SimpleNamespace(to_state=lambda: {"src_proto": b"a", "tgt_proto": None})
    student.vocab = SimpleNamespace(to_state=lambda: {"src_proto": b"b", "tgt_proto": None})
    with pytest.raises(ValueError, match="different SentencePiece models"):
        student._check_teacher_vocab()
    with pytest.raises(ValueError, match="kd.temperature must be > 0"):
        nmt_student(nmt_teacher, kd={"temperature": 0.0})
    with pytest.raises(ValueError, match=r"kd.alpha must be in \[0, 1\]"):
        nmt_student(None, kd={"alpha": 1.5})
    with pytest.raises(ValueError, match="does not exist"):
        nmt_student(nmt_teacher.parent / "missing.ckpt")


# --- NER ---------------------------------------------------------------------------------------

def tagger(tokenizer_file: Path, config: dict = BERT, labels: list[str] = LABELS, seed: int = 0,
           **kw) -> TaggerModule:
    return tiny_tagger(tokenizer_file, config, labels, seed, vocab_from_tokenizer=True, **kw)


def ner_batch() -> dict[str, torch.Tensor]:
    return tiny_ner_batch(max_id=60, ignore_first=True)


@pytest.fixture
def ner_teacher(tokenizer_file: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ner_teacher.ckpt"
    save_like_lightning(tagger(tokenizer_file, casing=True), path)
    return path


def test_ner_kd_loss_is_the_token_level_formula(tokenizer_file: Path, ner_teacher: Path) -> None:
    student = tagger(tokenizer_file, STUDENT_BERT, seed=1,
                     kd={"teacher": str(ner_teacher), "alpha": 0.7, "temperature": 2.0})
    b = ner_batch()
    loss = student.training_loss(b)
    with torch.no_grad():
        t = student.teacher(b["input_ids"], b["attention_mask"], b["casing"])
    expected = by_hand(student(b["input_ids"], b["attention_mask"]), t, b["labels"], -100, 0.7, 2.0)
    torch.testing.assert_close(loss, expected)


def test_ner_hidden_state_kd_adds_the_layer_aligned_mse(tokenizer_file: Path, ner_teacher: Path) -> None:
    one_layer = {**BERT, "num_hidden_layers": 1}
    student = tagger(tokenizer_file, one_layer, seed=1, casing=True,
                     kd={"teacher": str(ner_teacher), "hidden_weight": 0.5})
    plain = tagger(tokenizer_file, one_layer, seed=1, casing=True, kd={"teacher": str(ner_teacher)})
    b = ner_batch()
    inputs, real = (b["input_ids"], b["attention_mask"], b["casing"]), b["attention_mask"].bool()
    with torch.no_grad():
        last_teacher = student.teacher.hidden_states(*inputs)[-1]  # 1 student layer <-> teacher layer 2 of 2
    mse = F.mse_loss(student.hidden_states(*inputs)[-1][real], last_teacher[real])
    loss = student.training_loss(b)
    torch.testing.assert_close(loss, plain.training_loss(b) + 0.5 * mse)
    loss.backward()
    assert student.bert.layers[0].ffn.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.teacher.parameters())

    twin = tagger(tokenizer_file, casing=True, init_from=str(ner_teacher),
                  kd={"teacher": str(ner_teacher), "hidden_weight": 1.0, "alpha": 1.0})
    assert float(twin.training_loss(b).detach()) == pytest.approx(0.0, abs=1e-6)  # same weights: no KL, no MSE
    narrow = tagger(tokenizer_file, STUDENT_BERT, casing=True, kd={"teacher": str(ner_teacher), "hidden_weight": 1.0})
    with pytest.raises(ValueError, match="hidden-state alignment needs equal hidden sizes, student 8 vs teacher 16"):
        narrow.training_loss(b)
    with pytest.raises(ValueError, match="kd.hidden_weight must be >= 0"):
        tagger(tokenizer_file, kd={"hidden_weight": -1.0})


def test_ner_hidden_state_kd_student_reloads_alone(tokenizer_file: Path, ner_teacher: Path, tmp_path: Path) -> None:
    student = tagger(tokenizer_file, seed=1, casing=True, kd={"teacher": str(ner_teacher), "hidden_weight": 1.0})
    path = tmp_path / "student.ckpt"
    save_like_lightning(student, path)
    loaded = TaggerModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    assert loaded.teacher is None and loaded.kd is None  # the resolved config: no teacher to look for
    b = ner_batch()
    inputs = (b["input_ids"], b["attention_mask"], b["casing"])
    torch.testing.assert_close(loaded.eval()(*inputs), student.eval()(*inputs))


def test_ner_label_mismatch_is_a_clear_error(tokenizer_file: Path, ner_teacher: Path) -> None:
    with pytest.raises(ValueError, match=r"teacher .* has labels .* must share the label set"):
        tagger(tokenizer_file, STUDENT_BERT, labels=LABELS + ["B-ORG"], kd={"teacher": str(ner_teacher)})


def test_ner_compressed_student_fits_with_frozen_teacher_and_reloads_alone(
    tokenizer_file: Path, ner_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    share = {"k": 1, "n": 3, "init_from": None}
    student = tagger(tokenizer_file, STUDENT_BERT, seed=1,
                     kd={"teacher": str(ner_teacher)}, student={"factorize_embedding_rank": 4, "share_layers": share})
    assert isinstance(student.bert.layers, SharedLayerStack)
    assert (student.bert.layers.k, student.bert.layers.n) == (1, 3)
    assert isinstance(student.bert.embeddings.word_embeddings, FactorizedEmbedding)
    dense = tagger(tokenizer_file, STUDENT_BERT)
    assert student.state_dict().keys() != dense.state_dict().keys()  # compressed, and no teacher keys
    assert not any("teacher" in k for k in student.state_dict())
    probe = TeacherProbe()
    trainer = L.Trainer(callbacks=[probe], **FIT)
    trainer.fit(student, DataLoader([ner_batch()] * 2, batch_size=None))
    assert probe.seen == [(True, True, True)] * 2
    exact = sum(p.numel() for p in {id(p): p for p in student.parameters()}.values())
    assert f"student {exact:,} parameters" in capsys.readouterr().out
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["kd"] is None and "sharing" in ckpt[SPEC_KEY]
    assert "factorization" in ckpt[SPEC_KEY]
    ner_teacher.unlink()
    loaded = TaggerModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False)
    assert loaded.teacher is None
    student.eval()
    loaded.eval()
    b = ner_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(b["input_ids"], b["attention_mask"]),
                                   student(b["input_ids"], b["attention_mask"]))
    sentences = [["EU", "rejects", "German", "call"], ["British", "lamb", "."]]
    assert loaded.tag(sentences) == student.tag(sentences)


def test_ner_shared_student_initialised_from_a_chosen_layer(tokenizer_file: Path) -> None:
    dense = tagger(tokenizer_file, seed=0)
    student = tagger(tokenizer_file, seed=0, student={"share_layers": {"k": 1, "n": 6, "init_from": 1}})
    shared = student.bert.layers
    assert (shared.k, shared.n, len(shared.layers)) == (1, 6, 1)
    for (name, p), q in zip(shared.layers[0].named_parameters(), dense.bert.layers[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    per_layer = sum(p.numel() for p in dense.bert.layers[0].parameters())
    count = sum(p.numel() for p in {id(p): p for p in student.parameters()}.values())
    assert count == sum(p.numel() for p in dense.parameters()) - per_layer  # 2 dense layers -> 1 shared
    with pytest.raises(ValueError, match=r"share_layers must be \{k, n"):
        tagger(tokenizer_file, student={"share_layers": {"k": 1}})


def test_ner_shared_student_from_the_fine_tuned_teacher_layer(tokenizer_file: Path, ner_teacher: Path,
                                                              tmp_path: Path) -> None:
    teacher = TaggerModule.load_from_checkpoint(ner_teacher, weights_only=False)
    student = tagger(tokenizer_file, seed=3, casing=True, init_from=str(ner_teacher),
                     student={"share_layers": {"k": 1, "n": 6, "init_from": 1}}, kd={"teacher": str(ner_teacher)})
    for p, q in zip(student.bert.layers.layers[0].parameters(), teacher.bert.layers[1].parameters(), strict=True):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(student.head.weight, teacher.head.weight)
    ckpt = save_like_lightning(student, tmp_path / "shared.ckpt")
    assert ckpt["hyper_parameters"]["init_from"] is None and ckpt["hyper_parameters"]["kd"] is None
    ner_teacher.unlink()
    loaded = TaggerModule.load_from_checkpoint(tmp_path / "shared.ckpt", weights_only=False)
    b = ner_batch()
    student.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(b["input_ids"], b["attention_mask"], b["casing"]),
                                   student(b["input_ids"], b["attention_mask"], b["casing"]))
