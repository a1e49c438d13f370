"""Our BERT against transformers.BertModel (the oracle) and the HF checkpoint importer's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from core.bert import BertConfig, BertModel
from core.hf_import import check_vocab_size, default_checkpoint_dir, load_bert, load_tokenizer

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
            max_position_embeddings=64)


def padded_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encs = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encs])
    return ids, mask


def write_hf_folder(folder: Path, hf_model: transformers.BertModel, prefix: str = "", fmt: str = "bin",
                    extra: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A HF-style checkpoint folder (config.json + weights) from a transformers model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    state = {prefix + k: v.clone() for k, v in hf_model.state_dict().items() if k not in drop}
    state.update(extra or {})
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def minilm() -> Path:
    return default_checkpoint_dir()


def test_minilm_hidden_states_match_transformers(minilm: Path) -> None:
    ours = load_bert(minilm).eval()
    oracle = transformers.BertModel.from_pretrained(str(minilm)).eval()
    ids, mask = padded_batch(load_tokenizer(minilm), [
        "EU rejects German call to boycott British lamb .",
        "Peter Blackburn",
        "The European Commission said on Thursday it disagreed with German advice to consumers .",
    ])
    assert (mask == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        mine = ours(ids, mask, all_hidden_states=True)
        theirs = oracle(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(mine) == len(theirs) == 7
    real = mask.bool()
    for a, b in zip(mine, theirs, strict=True):
        assert (a - b)[real].abs().max().item() <= 1e-4
    with torch.no_grad():
        assert torch.equal(ours(ids, mask), mine[-1])


@pytest.mark.parametrize("prefix,fmt", [("", "bin"), ("bert.", "bin"), ("bert.", "safetensors")])
def test_checkpoint_variants_load_and_match(tmp_path: Path, prefix: str, fmt: str) -> None:
    torch.manual_seed(0)
    oracle = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    # Task checkpoints carry MLM heads: they must be ignored, not reported.
    heads = {"cls.predictions.bias": torch.zeros(50),
             "cls.predictions.transform.dense.weight": torch.zeros(16, 16)}
    folder = write_hf_folder(tmp_path / "ckpt", oracle, prefix, fmt, extra=heads)
    ours = load_bert(folder).eval()
    ids = torch.randint(1, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        diff = ours(ids, mask) - oracle(input_ids=ids, attention_mask=mask).last_hidden_state
    assert diff[mask.bool()].abs().max().item() <= 1e-5


def test_qkv_fused_in_q_k_v_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    oracle = transformers.BertModel(transformers.BertConfig(**TINY))
    ours = load_bert(write_hf_folder(tmp_path / "ckpt", oracle))
    fused = ours.layers[1].self_attn.qkv_proj.weight
    attn = oracle.encoder.layer[1].attention.self
    assert torch.equal(fused, torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]))


def test_unexpected_and_missing_tensors_listed_in_one_error(tmp_path: Path) -> None:
    oracle = transformers.BertModel(transformers.BertConfig(**TINY))
    folder = write_hf_folder(
        tmp_path / "ckpt", oracle, fmt="safetensors",
        extra={"classifier.weight": torch.zeros(3, 16),
               "encoder.layer.0.attention.self.rotary.weight": torch.zeros(4)},
        drop=("encoder.layer.1.output.dense.bias", "encoder.layer.0.attention.self.key.weight"),
    )
    with pytest.raises(ValueError) as err:
        load_bert(folder)
    message = str(err.value)
    for name in ("classifier.weight", "encoder.layer.0.attention.self.rotary.weight",
                 "layers.1.ffn.fc2.bias", "layers.0.self_attn.qkv_proj.weight"):
        assert name in message


def test_folder_without_weights_or_vocab_is_a_clear_error(tmp_path: Path, minilm: Path) -> None:
    (tmp_path / "config.json").write_text((minilm / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no weights: looked for model.safetensors"):
        load_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*tokenizer.json, vocab.txt"):
        load_tokenizer(tmp_path)


def test_vocab_txt_tokenizer_equals_tokenizer_json(tmp_path: Path, minilm: Path) -> None:
    # Only vocab.txt, no tokenizer_config.json: lower-casing is inferred from the uncased vocab.
    shutil.copy(minilm / "vocab.txt", tmp_path / "vocab.txt")
    text = "Peter Blackburn visited BRUSSELS on 1996-08-22 ."
    from_vocab = load_tokenizer(tmp_path).encode(text)
    from_json = load_tokenizer(minilm).encode(text)
    assert from_vocab.ids == from_json.ids
    assert load_tokenizer(tmp_path, lowercase=False).encode("Peter").tokens != from_json.tokens[:1]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert "[UNK]" in load_tokenizer(tmp_path).encode("BRUSSELS").tokens  # cased lookup in an uncased vocab


def test_loaded_tokenizer_has_no_stored_truncation_or_padding(minilm: Path) -> None:
    tokenizer = load_tokenizer(minilm)  # MiniLM's tokenizer.json pads/truncates to 128
    assert len(tokenizer.encode("word " * 300).ids) == 302
    assert len(tokenizer.encode("word").ids) == 3


def test_vocab_size_mismatches_are_errors(tmp_path: Path, minilm: Path) -> None:
    with pytest.raises(ValueError, match="30522 tokens but the word embeddings have 50 rows"):
        check_vocab_size(load_tokenizer(minilm), BertModel(BertConfig(**TINY)))
    oracle = transformers.BertModel(transformers.BertConfig(**TINY))
    folder = write_hf_folder(tmp_path / "ckpt", oracle)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 60}))
    with pytest.raises(ValueError, match="50 rows but config.json says vocab_size=60"):
        load_bert(folder)


def test_default_checkpoint_dir_is_the_installed_minilm(minilm: Path) -> None:
    cfg = BertConfig.from_json(minilm / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (384, 6, 30522)
    assert (minilm / "model.safetensors").is_file() and (minilm / "tokenizer.json").is_file()
