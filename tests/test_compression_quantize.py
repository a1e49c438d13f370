"""compression.quantize: int8 / bf16 models of every kind save -> reload -> identical outputs; scan; errors."""

from pathlib import Path

import pytest
import torch
from conftest import save_like_lightning, tiny_ner_batch, tiny_tagger
from torch import nn

from compression.factorize import FactorizedLinear, factorize_linears
from compression.gates import attach_gates
from compression.prune import prune_model
from compression.quantize import QUANT_KEY, check_backend, module_type, quantization_spec, quantize, sensitivity_scan
from core.config import load_module
from ner.module import TaggerModule
from nmt.module import TranslationModule
from sts.module import SentenceEncoderModule

ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
SRC = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
TGT_IN = torch.tensor([[2, 11, 12, 13], [2, 14, 0, 0]])


def translator(seed: int = 0) -> TranslationModule:
    """A tiny NMT model, heads pruned unevenly and decoder FFNs factorised."""
    torch.manual_seed(seed)
    module = TranslationModule(arch=ARCH, data_spec=DATA_SPEC).eval()
    prune_model(module.model, {"encoder_self": [[0, 2, 3], [1]], "decoder_cross": [[0, 1], [0, 1, 2, 3]]})
    factorize_linears(module.model, r"decoder\.\d+\.ffn\.fc1", 4)
    return module


def tagger(tokenizer_file: Path, seed: int = 0) -> TaggerModule:
    """A tiny tagger with uneven heads and a factorised FFN."""
    module = tiny_tagger(tokenizer_file, seed=seed, vocab_from_tokenizer=True).eval()
    prune_model(module.bert, {"bert_self": [[0, 1, 3], [2]]})
    factorize_linears(module.bert, r"layers\.0\.ffn\.fc2", 4)
    return module


def encoder(tokenizer_file: Path, seed: int = 0) -> SentenceEncoderModule:
    """A tiny sentence encoder with uneven heads."""
    from test_sts import tiny_module

    module = tiny_module(tokenizer_file, seed=seed)
    prune_model(module.bert, {"bert_self": [[1, 2], [0, 1, 2, 3]]})
    return module


def outputs(module: nn.Module) -> torch.Tensor:
    """The module's float outputs on a fixed padded batch (logits / embeddings)."""
    with torch.no_grad():
        if isinstance(module, TranslationModule):
            return module.model(SRC, TGT_IN).float()
        batch = tiny_ner_batch(max_id=60)
        if isinstance(module, TaggerModule):
            return module(batch["input_ids"], batch["attention_mask"], batch["casing"]).float()
        return module(batch["input_ids"], batch["attention_mask"]).float()


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("kind", ["nmt", "ner", "sts"])
def test_quantised_model_reloads_from_its_checkpoint_alone_and_predicts_identically(
    kind: str, dtype: str, tokenizer_file: Path, tmp_path: Path,
) -> None:
    make = {"nmt": lambda: translator(), "ner": lambda: tagger(tokenizer_file),
            "sts": lambda: encoder(tokenizer_file)}[kind]
    float_model = make()
    expected_float = outputs(float_model)
    model = quantize(float_model, dtype)
    got = outputs(model)
    # quantised for real: close to the float model, but not equal
    assert not torch.equal(got, expected_float)
    assert (got - expected_float).abs().max() < 0.25 * expected_float.abs().max() + 0.05
    if dtype == "int8":
        quantized = [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
        assert quantized and not any(type(m) is nn.Linear or isinstance(m, FactorizedLinear)
                                     for m in model.modules())
    path = tmp_path / "q.ckpt"
    save_like_lightning(model, path)
    assert torch.load(path, weights_only=False)[QUANT_KEY]["dtype"] == dtype
    reloaded = load_module(type(model), path).eval()
    assert quantization_spec(reloaded).dtype == dtype
    torch.testing.assert_close(outputs(reloaded), got, rtol=0, atol=0)
    if kind == "nmt":
        assert reloaded.translate(SRC, 2) == model.translate(SRC, 2)


def test_exclusion_keeps_matching_linears_in_float(tokenizer_file: Path) -> None:
    model = quantize(tagger(tokenizer_file), "int8", exclude=["head", "bert.layers.*.ffn.*"])
    assert type(model.head) is nn.Linear
    assert all(type(m) is nn.Linear for name, m in model.bert.named_modules() if ".ffn." in name
               and isinstance(m, nn.Linear))
    assert type(model.bert.layers[0].self_attn.qkv_proj).__module__.startswith("torch.ao.nn.quantized")


def test_int8_quantises_the_tied_output_projection_through_an_untied_copy() -> None:
    module = translator()
    expected = outputs(module)
    module.model.untie_output_projection()  # the float copy computes the same logits
    torch.testing.assert_close(outputs(module), expected, rtol=0, atol=1e-6)
    assert module.model.output_projection.weight.data_ptr() != module.model.embed.tokens.weight.data_ptr()
    quantised = quantize(translator(), "int8")
    assert type(quantised.model.output_projection).__module__.startswith("torch.ao.nn.quantized")
    assert quantised.model.embed.tokens.weight.dtype == torch.float32
    kept = quantize(translator(), "int8", exclude=["*output_projection"])
    assert kept.model.output_projection is None  # still tied, projected in float


def test_sensitivity_scan_reports_one_row_per_linear_type(tokenizer_file: Path) -> None:
    reference = outputs(tagger(tokenizer_file))

    def quality(model: nn.Module) -> float:  # higher is better: minus the distance to the float outputs
        return -float((outputs(model) - reference).abs().mean())

    rows = sensitivity_scan(lambda: tagger(tokenizer_file), quality)
    types = [r["type"] for r in rows]
    assert types[0] == "none" and types[-1] == "all" and rows[0]["change"] == 0.0
    expected = sorted({module_type(n) for n in ("bert.layers.0.self_attn.qkv_proj", "bert.layers.0.self_attn.out_proj",
                                                "bert.layers.0.ffn.fc1", "bert.layers.0.ffn.fc2.0",
                                                "bert.layers.0.ffn.fc2.1", "bert.layers.1.ffn.fc2", "head")})
    assert types[1:-1] == expected
    assert all(r["change"] < 0 for r in rows[1:])  # every quantised type moves the outputs
    assert rows[-1]["layers"] == sum(r["layers"] for r in rows[1:-1])
    layers = sensitivity_scan(lambda: tagger(tokenizer_file), quality, within="bert.layers.*.self_attn.qkv_proj")
    assert [r["type"] for r in layers[1:-1]] == ["bert.layers.0.self_attn.qkv_proj", "bert.layers.1.self_attn.qkv_proj"]
    assert all(r["layers"] == 1 and r["change"] < 0 for r in layers[1:-1])
    assert layers[-1]["change"] > rows[-1]["change"]  # the whole type alone moves less than every type
    with pytest.raises(ValueError, match="no linear layer of type 'nope'"):
        sensitivity_scan(lambda: tagger(tokenizer_file), quality, within="nope")


def test_bad_input_is_one_clear_error(tokenizer_file: Path) -> None:
    model = quantize(tagger(tokenizer_file), "int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(model, "int8")
    gated = tagger(tokenizer_file)
    attach_gates(gated.bert, ["bert_self"])
    with pytest.raises(ValueError, match="prune or detach the gates first"):
        quantize(gated, "int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        quantize(tagger(tokenizer_file), "int4")


def test_missing_backend_is_named() -> None:
    with pytest.raises(RuntimeError, match="needs an x86 quantised engine"):
        check_backend(["qnnpack", "none"])
    assert check_backend() in ("x86", "fbgemm", "onednn")  # this machine has one
