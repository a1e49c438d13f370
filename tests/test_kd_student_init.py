"""Students initialised from teacher layers (`keep_layers`) and the on-disk teacher-logit cache, tiny models."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import save_like_lightning
from test_kd_modules import ARCH, BERT, DATA_SPEC, FIT, STUDENT_BERT, ner_batch, tagger
from torch.utils.data import DataLoader

from compression.factorize import FactorizedEmbedding, FactorizedLinear, factorize_embedding, factorize_linears
from compression.logit_cache import TeacherLogitCache, row_keys
from compression.student import init_from_teacher_layers
from ner.module import TaggerModule
from nmt.module import TranslationModule


@pytest.fixture
def teacher_ckpt(tokenizer_file: Path, tmp_path: Path) -> Path:
    path = tmp_path / "teacher.ckpt"
    save_like_lightning(tagger(tokenizer_file, {**BERT, "num_hidden_layers": 3}, casing=True), path)
    return path


def batches() -> list[dict[str, torch.Tensor]]:
    """Two batches holding the same two examples padded differently (and in another order)."""
    b = ner_batch()
    wide = {k: torch.nn.functional.pad(v, (0, 3), value=-100 if k == "labels" else 0) for k, v in b.items()}
    swapped = {k: v.flip(0) for k, v in wide.items()}
    return [b, swapped]


def test_cached_kd_loss_equals_live_teacher_kd_loss(tokenizer_file: Path, teacher_ckpt: Path, tmp_path: Path) -> None:
    live = tagger(tokenizer_file, STUDENT_BERT, seed=1, kd={"teacher": str(teacher_ckpt), "alpha": 0.7})
    cached = tagger(tokenizer_file, STUDENT_BERT, seed=1,
                    kd={"teacher": str(teacher_ckpt), "alpha": 0.7, "cache": str(tmp_path / "cache")})
    first, second = batches()
    torch.testing.assert_close(cached.training_loss(first), live.training_loss(first))  # miss: fills the cache
    assert (cached.logit_cache.misses, cached.logit_cache.hits) == (2, 0)
    torch.testing.assert_close(cached.training_loss(second), live.training_loss(second))  # hit: other padding
    assert cached.logit_cache.hits == 2
    cached.logit_cache.save()

    # A new run with the same teacher file reads the logits from disk; the teacher never runs.
    again = tagger(tokenizer_file, STUDENT_BERT, seed=1,
                    kd={"teacher": str(teacher_ckpt), "alpha": 0.7, "cache": str(tmp_path / "cache")})
    again.teacher.forward = None  # calling the teacher would now fail
    torch.testing.assert_close(again.training_loss(second), live.training_loss(second))
    assert (again.logit_cache.hits, again.logit_cache.misses) == (2, 0)


def test_cache_is_per_teacher_file_and_survives_fit(tokenizer_file: Path, teacher_ckpt: Path, tmp_path: Path) -> None:
    student = tagger(tokenizer_file, STUDENT_BERT, kd={"teacher": str(teacher_ckpt), "cache": str(tmp_path / "cache")})
    L.Trainer(**FIT).fit(student, DataLoader(batches(), batch_size=None))
    files = list((tmp_path / "cache").glob("teacher-*.safetensors"))
    assert [f.name for f in files] == [student.logit_cache.path.name]
    other = tmp_path / "other_teacher.ckpt"
    save_like_lightning(tagger(tokenizer_file, seed=5, casing=True), other)
    assert TeacherLogitCache(tmp_path / "cache", other).entries == {}
    reread = TeacherLogitCache(tmp_path / "cache", teacher_ckpt)
    b = ner_batch()
    lengths = b["attention_mask"].sum(1)
    keys = row_keys(lengths, b["input_ids"], b["casing"])
    assert all(k in reread.entries for k in keys)
    with torch.no_grad():
        want = student.teacher(b["input_ids"], b["attention_mask"], b["casing"])
    got = reread.logits(keys, lengths, b["input_ids"].shape[1],
                        compute=lambda: pytest.fail("teacher ran despite a full cache"))
    real = b["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real])


def test_student_from_teacher_layers_reloads_from_its_checkpoint_alone(
    tokenizer_file: Path, teacher_ckpt: Path, tmp_path: Path,
) -> None:
    teacher = TaggerModule.load_from_checkpoint(teacher_ckpt, weights_only=False)
    student = tagger(tokenizer_file, {**BERT, "num_hidden_layers": 3}, casing=True, init_from=str(teacher_ckpt),
                     student={"keep_layers": [0, 2], "factorize_embedding_rank": 4}, kd={"teacher": str(teacher_ckpt)})
    assert len(student.bert.layers) == 2 and student.resolved_hparams()["bert_config"]["num_hidden_layers"] == 2
    for mine, theirs in ((0, 0), (1, 2)):
        for p, q in zip(student.bert.layers[mine].parameters(), teacher.bert.layers[theirs].parameters(),
                        strict=True):
            torch.testing.assert_close(p, q)
    emb = student.bert.embeddings.word_embeddings
    assert isinstance(emb, FactorizedEmbedding) and emb.rank == 4
    u, s, vh = torch.linalg.svd(teacher.bert.embeddings.word_embeddings.weight.double(), full_matrices=False)
    torch.testing.assert_close(emb.weight.double(), (u[:, :4] * s[:4]) @ vh[:4], atol=1e-5, rtol=1e-5)
    save_like_lightning(student, tmp_path / "student.ckpt")
    teacher_ckpt.unlink()
    loaded = TaggerModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False)
    student.eval()
    loaded.eval()
    b = ner_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(b["input_ids"], b["attention_mask"], b["casing"]),
                                   student(b["input_ids"], b["attention_mask"], b["casing"]))
    sentences = [["EU", "rejects", "German", "call"], ["British", "lamb", "."]]
    assert loaded.tag(sentences) == student.tag(sentences)


@pytest.mark.parametrize("keep", [[], [0, 0], [3]])
def test_bad_keep_layers_is_a_clear_error(tokenizer_file: Path, keep: list[int]) -> None:
    with pytest.raises(ValueError, match=r"keep_layers must list distinct layer indices in \[0, 1\]"):
        tagger(tokenizer_file, student={"keep_layers": keep})


def test_factorised_tagger_like_the_benchmark_row_reloads_alone(tokenizer_file: Path, tmp_path: Path) -> None:
    model = tagger(tokenizer_file, casing=True)
    factorize_embedding(model.bert, 4)
    report = factorize_linears(model.bert, r"^layers\.", 3)
    assert report["params_after"] < report["params_before"] and report["layers"]
    save_like_lightning(model, tmp_path / "svd.ckpt")
    loaded = TaggerModule.load_from_checkpoint(tmp_path / "svd.ckpt", weights_only=False)
    assert sum(isinstance(m, FactorizedLinear) for m in loaded.bert.modules()) == len(report["layers"])
    sentences = [["EU", "rejects", "German", "call"], ["British", "lamb", "."]]
    model.eval()
    b = ner_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(b["input_ids"], b["attention_mask"], b["casing"]),
                                   model(b["input_ids"], b["attention_mask"], b["casing"]))
    assert loaded.tag(sentences) == model.tag(sentences)


def test_half_depth_nmt_student_from_teacher_layers() -> None:
    torch.manual_seed(0)
    teacher = TranslationModule(arch=ARCH, data_spec=DATA_SPEC)
    student = TranslationModule(arch={**ARCH, "encoder_layers": 1, "decoder_layers": 1}, data_spec=DATA_SPEC)
    init_from_teacher_layers(student.model, teacher.model, {"encoder": [1], "decoder": [0]})
    for mine, theirs in ((student.model.encoder[0], teacher.model.encoder[1]),
                         (student.model.decoder[0], teacher.model.decoder[0]),
                         (student.model.embed, teacher.model.embed),
                         (student.model.decoder_norm, teacher.model.decoder_norm)):
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="teacher has no 'encoder.5"):
        init_from_teacher_layers(student.model, teacher.model, {"encoder": [5], "decoder": [0]})
    narrow = TranslationModule(arch={**ARCH, "d_model": 8, "num_heads": 2}, data_spec=DATA_SPEC)
    with pytest.raises(ValueError, match="must have the same width"):
        init_from_teacher_layers(narrow.model, teacher.model, {"encoder": [0, 1], "decoder": [0, 1]})
