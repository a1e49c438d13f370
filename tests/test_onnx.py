"""core.onnx: exported graphs match PyTorch (padded batches, two lengths), ONNX beam search = PyTorch beam search,
the exported file alone rebuilds the model, int8 through ONNX Runtime, and the bad-input errors."""

from pathlib import Path

import onnx
import pytest
import torch
from conftest import save_like_lightning, tiny_tagger
from test_compression_quantize import SRC, encoder, tagger, translator

from compression.gates import attach_gates
from compression.quantize import quantize
from core.onnx import export_onnx, int8_path, load_onnx
from core.tasks import get_task
from ner.predict import load_tagger
from nmt.onnx import DECODER_SUFFIX

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (seconds)


def bert_batches(vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two padded batches of different lengths and sizes."""
    out = []
    for batch, length in ((3, 9), (2, 17)):
        g = torch.Generator().manual_seed(length)
        ids = torch.randint(5, vocab, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, length // 2:] = 0
        out.append((ids, mask))
    return out


def export(module, tmp_path: Path, **kw) -> Path:
    """Save `module` as a checkpoint and export it; the main ONNX file."""
    ckpt = tmp_path / "m.ckpt"
    save_like_lightning(module, ckpt)
    path = tmp_path / "m.onnx"
    export_onnx(ckpt, path, **kw)
    return path


@pytest.mark.parametrize("kind", ["ner", "sts"])
def test_bert_export_matches_pytorch_on_padded_batches(kind: str, tokenizer_file: Path, tmp_path: Path) -> None:
    if kind == "ner":
        module = tagger(tokenizer_file)  # uneven heads, a factorised FFN, casing embedding
        crf = tiny_tagger(tokenizer_file, vocab_from_tokenizer=True, crf=True).eval()
        module.crf = crf.crf  # Viterbi on the host: its weights travel in the file's skeleton
        module.hparams.crf = True
        with torch.no_grad():
            module.crf.transitions.normal_()
    else:
        module = encoder(tokenizer_file)
    path = export(module, tmp_path)
    exported = load_onnx(path)
    assert type(exported) is type(module)
    for ids, mask in bert_batches(module.bert.cfg.vocab_size):
        args = (ids, mask, torch.randint(0, 3, ids.shape)) if kind == "ner" else (ids, mask)
        with torch.no_grad():
            want = module(*args)
        got = exported(*args)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-4
    if kind == "ner":
        sentences = [["Anna", "lives", "in", "Berlin", "."], ["New", "York"]]
        assert exported.tag(sentences) == module.tag(sentences)
        assert get_task("ner").load(path).tag(sentences) == module.tag(sentences)
        assert load_tagger(path).tag(sentences) == module.tag(sentences)  # what `python -m ner.predict` loads


def test_onnx_beam_search_equals_pytorch_beam_search(tmp_path: Path) -> None:
    module = translator()  # uneven heads per layer, a factorised decoder FFN
    path = export(module, tmp_path, int8=True)
    assert path.with_name("m" + DECODER_SUFFIX + ".onnx").is_file()
    exported = get_task("nmt").load(path)
    memory_kv, mask = exported.model.encode(SRC)
    assert torch.equal(mask, module.model.encode(SRC)[1])
    for beam in (1, 2, 4):
        assert exported.translate(SRC, beam) == module.translate(SRC, beam)
    # Every step of a greedy decode, logits and caches, not only the hypotheses (a tiny model's argmax hides a
    # cache read from the wrong input).
    memory, memory_mask = module.model.encode(SRC)
    caches, exported_caches = module.model.new_cache(), exported.model.new_cache()
    tokens = torch.full((len(SRC), 1), module.cfg.bos_id)
    with torch.no_grad():
        for step in range(5):
            want = module.model.decode(tokens, memory, memory_mask, caches, offset=step)
            got = exported.model.decode(tokens, memory_kv, mask, exported_caches, offset=step)
            assert (got - want).abs().max() <= 1e-4, step
            tokens = want[:, -1:].argmax(-1)
    longer = torch.cat([SRC, torch.tensor([[11, 12], [13, 0]])], dim=1)
    assert exported.translate(longer, 3) == module.translate(longer, 3)
    int8 = load_onnx(int8_path(path))  # ONNX Runtime's dynamic int8: same interface, close scores
    assert len(int8.translate(SRC, 2)) == len(SRC)


def test_int8_onnx_of_a_tagger_runs_close_to_float(tokenizer_file: Path, tmp_path: Path) -> None:
    module = tagger(tokenizer_file)
    path = export(module, tmp_path, int8=True)
    int8 = load_onnx(int8_path(path))
    ids, mask = bert_batches(module.bert.cfg.vocab_size)[0]
    casing = torch.zeros_like(ids)
    with torch.no_grad():
        want = module(ids, mask, casing)
    got = int8(ids, mask, casing)
    assert not torch.equal(got, want) and (got - want).abs().max() < 0.25 * want.abs().max() + 0.05


def test_bad_input_is_one_clear_error(tokenizer_file: Path, tmp_path: Path) -> None:
    gated = tagger(tokenizer_file)
    attach_gates(gated.bert, ["bert_self"])
    ckpt = tmp_path / "gated.ckpt"
    save_like_lightning(gated, ckpt)
    with pytest.raises(ValueError, match="prune or detach the gates first"):
        export_onnx(ckpt, tmp_path / "g.onnx")
    plain = tmp_path / "plain.ckpt"
    save_like_lightning(tagger(tokenizer_file), plain)
    with pytest.raises(ValueError, match="opset 99 is not available"):
        export_onnx(plain, tmp_path / "x.onnx", opset=99)
    quantised = tmp_path / "q.ckpt"
    save_like_lightning(quantize(tagger(tokenizer_file), "int8"), quantised)
    with pytest.raises(ValueError, match="already quantised"):
        export_onnx(quantised, tmp_path / "q.onnx")
    path = tmp_path / "t.onnx"
    export_onnx(plain, path)
    with pytest.raises(ValueError, match="expected a 'nmt' one"):
        get_task("nmt").load(path)
    bare = onnx.load(path)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="not the main file of a model exported"):
        load_onnx(tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    # a tagger's graph under a translation model's metadata: its inputs are not the encoder's
    (tmp_path / "nmt").mkdir()
    nmt_meta = {p.key: p.value for p in onnx.load(export(translator(), tmp_path / "nmt")).metadata_props}
    mixed = onnx.load(path)
    onnx.helper.set_metadata_props(mixed, nmt_meta)
    onnx.save(mixed, tmp_path / "mixed.onnx")
    with pytest.raises(ValueError, match=r"inputs \['input_ids', 'attention_mask'\] do not match"):
        load_onnx(tmp_path / "mixed.onnx")


def test_export_entry_point_quantises_and_exports(tmp_path: Path) -> None:
    import export

    ckpt = tmp_path / "nmt.ckpt"
    save_like_lightning(translator(), ckpt)
    (int8_ckpt,) = export.main(["--ckpt", str(ckpt), "--output", str(tmp_path / "nmt.int8.ckpt"), "--dtype", "int8"])
    reloaded = get_task("nmt").load(int8_ckpt)
    assert reloaded.translate(SRC, 2) == quantize(translator(), "int8").translate(SRC, 2)
    files = export.main(["--ckpt", str(ckpt), "--output", str(tmp_path / "nmt.onnx")])
    assert [f.name for f in files] == ["nmt.onnx", "nmt.decoder.onnx"]
    with pytest.raises(SystemExit):
        export.main(["--ckpt", str(ckpt), "--output", str(tmp_path / "nmt.int8.ckpt")])  # no --dtype
