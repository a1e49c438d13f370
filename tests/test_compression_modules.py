"""Compressed TranslationModule / TaggerModule checkpoints reload from the file alone; gates, L0, init_from."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_BERT, TINY_LABELS, save_like_lightning, tiny_ner_batch, tiny_tagger
from torch.utils.data import DataLoader

from compression.factorize import factorize_embedding, factorize_linears
from compression.gates import attach_gates, attached_gates, l0_penalty
from compression.prune import prune_model
from compression.sharing import share_layers
from compression.spec import SPEC_KEY, apply_compression_spec, compression_spec
from ner.module import TaggerModule
from nmt.module import TranslationModule

DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
BERT, LABELS = TINY_BERT, TINY_LABELS


# --- builders ---------------------------------------------------------------------------------

def nmt_module(seed: int = 0, **kw) -> TranslationModule:
    torch.manual_seed(seed)
    return TranslationModule(arch=ARCH, data_spec=DATA_SPEC, **kw)


def nmt_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 50, (3, 7), generator=g)
    src[1, 5:] = 0
    tgt = torch.randint(4, 50, (3, 6), generator=g)
    tgt[2, 4:] = 0
    return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}


def nmt_out(module: TranslationModule) -> torch.Tensor:
    module.eval()
    b = nmt_batch()
    with torch.no_grad():
        return module.model(b["src"], b["tgt_in"])


def compress_nmt(module: TranslationModule) -> None:
    """Share the encoder (1 layer x 2), prune heads of every type, factorise FFN + a pruned projection."""
    net = module.model
    net.encoder = share_layers(net.encoder, k=1, n=2, init_from=1)
    prune_model(net, {"encoder_self": [[0, 2]], "decoder_self": [[1], [0, 1, 3]], "decoder_cross": [[], [2, 3]]})
    factorize_linears(net, r"ffn\.fc1$", rank=3)
    factorize_linears(net, r"decoder\.1\.self_attn\.out_proj$", rank=2)  # pruned first: needs heads before SVD
    factorize_embedding(net, 6)


def tagger(tokenizer_file: Path, seed: int = 0, **kw) -> TaggerModule:
    return tiny_tagger(tokenizer_file, seed=seed, **kw)


def ner_batch() -> dict[str, torch.Tensor]:
    return tiny_ner_batch(max_id=100)


def ner_out(module: TaggerModule) -> torch.Tensor:
    module.eval()
    b = ner_batch()
    with torch.no_grad():
        return module(b["input_ids"], b["attention_mask"])


def randomise_gates(network: torch.nn.Module) -> None:
    with torch.no_grad():
        for layers in attached_gates(network).values():
            for g in layers:
                g.log_alpha.normal_(0.0, 2.0)


# --- reload from the checkpoint alone ---------------------------------------------------------

def test_compressed_nmt_reloads_from_checkpoint_alone(tmp_path: Path) -> None:
    module = nmt_module()
    compress_nmt(module)
    expected = nmt_out(module)
    ckpt = save_like_lightning(module, tmp_path / "c.ckpt")
    spec = ckpt[SPEC_KEY]
    assert set(spec) == {"sharing", "heads", "factorization"}
    assert spec["sharing"] == {"encoder": {"k": 1, "n": 2}}
    assert spec["heads"]["decoder_cross"] == [[], [2, 3]]
    assert "decoder.1.self_attn.out_proj" in spec["factorization"]["linears"]

    loaded = TranslationModule.load_from_checkpoint(tmp_path / "c.ckpt", weights_only=False)
    assert compression_spec(loaded.model) == spec
    torch.testing.assert_close(nmt_out(loaded), expected, atol=0, rtol=0)
    # tied output projection survives the factorised embedding; decoding runs
    assert loaded.translate(nmt_batch()["src"], beam_size=2)


def test_compressed_gated_tagger_reloads_from_checkpoint_alone(tokenizer_file: Path, tmp_path: Path) -> None:
    module = tagger(tokenizer_file)
    bert = module.bert
    bert.layers = share_layers(bert.layers, k=1, n=2, init_from=1)
    prune_model(bert, {"bert_self": [[0, 3]]})
    factorize_linears(bert, r"ffn\.fc[12]$", rank=3)
    factorize_embedding(bert, 5)
    attach_gates(bert, ["bert_self"])  # attached by hand: no gate_types hparam, the spec alone brings them
    randomise_gates(bert)
    expected = ner_out(module)
    save_like_lightning(module, tmp_path / "t.ckpt")

    loaded = TaggerModule.load_from_checkpoint(tmp_path / "t.ckpt", weights_only=False)
    assert compression_spec(loaded.bert) == compression_spec(bert)
    assert compression_spec(loaded.bert)["gates"] == ["bert_self"]
    [gate] = attached_gates(loaded.bert)["bert_self"]
    assert torch.equal(gate.log_alpha, attached_gates(bert)["bert_self"][0].log_alpha)
    torch.testing.assert_close(ner_out(loaded), expected, atol=0, rtol=0)


def test_gates_from_gate_types_survive_pruning_and_reload(tmp_path: Path) -> None:
    module = nmt_module(gates={"types": ["encoder_self", "decoder_cross"], "l0_lambda": 0.01})
    assert sorted(attached_gates(module.model)) == ["decoder_cross", "encoder_self"]
    prune_model(module.model, {"encoder_self": [[1, 2, 3], [0]]})  # gates are sliced along
    randomise_gates(module.model)
    expected = nmt_out(module)
    save_like_lightning(module, tmp_path / "g.ckpt")

    loaded = TranslationModule.load_from_checkpoint(tmp_path / "g.ckpt", weights_only=False)
    for kind, layers in attached_gates(module.model).items():
        for a, b in zip(layers, attached_gates(loaded.model)[kind], strict=True):
            assert torch.equal(a.log_alpha, b.log_alpha)
    assert [g.num_heads for g in attached_gates(loaded.model)["encoder_self"]] == [3, 1]
    torch.testing.assert_close(nmt_out(loaded), expected, atol=0, rtol=0)


# --- L0 in the training loss --------------------------------------------------------------------

def test_l0_term_adds_exactly_lambda_times_penalty(tokenizer_file: Path) -> None:
    cases = [(nmt_module(gates={"types": ["encoder_self", "decoder_cross"], "l0_lambda": 0.05}), nmt_batch()),
             (tagger(tokenizer_file, gates={"types": ["bert_self"], "l0_lambda": 0.05}), ner_batch())]
    for module, batch in cases:
        randomise_gates(module.compressible_network())
        module.train()
        torch.manual_seed(3)  # same gate samples in both passes
        with_l0 = module.training_step(batch, 0)
        module.gate_config = replace(module.gate_config, l0_lambda=0.0)
        torch.manual_seed(3)
        without = module.training_step(batch, 0)
        penalty = l0_penalty(attached_gates(module.compressible_network()))
        torch.testing.assert_close(with_l0 - without, 0.05 * penalty, atol=1e-6, rtol=0)
        assert penalty.item() > 0


def test_l0_lambda_per_type_weights_each_penalty() -> None:
    weights = {"encoder_self": 0.02, "decoder_self": 0.3, "decoder_cross": 0.0}
    module = nmt_module(gates={"types": ["encoder_self", "decoder_self", "decoder_cross"], "l0_lambda": weights})
    randomise_gates(module.model)
    module.train()
    torch.manual_seed(3)
    with_l0 = module.training_step(nmt_batch(), 0)
    module.gate_config = replace(module.gate_config, l0_lambda=0.0)
    torch.manual_seed(3)
    without = module.training_step(nmt_batch(), 0)
    gates = attached_gates(module.model)
    expected = sum(w * l0_penalty({kind: gates[kind]}) for kind, w in weights.items())
    torch.testing.assert_close(with_l0 - without, expected, atol=1e-6, rtol=0)
    # each type's weight reaches only its own gates' log-alphas
    module.zero_grad()
    module.gate_config = replace(module.gate_config, l0_lambda=weights)
    module.l0_term().backward()
    assert all(g.log_alpha.grad is None or not g.log_alpha.grad.any() for g in gates["decoder_cross"])
    assert all(g.log_alpha.grad.abs().sum() > 0 for g in gates["encoder_self"] + gates["decoder_self"])


def test_l0_lambda_errors() -> None:
    with pytest.raises(ValueError, match="l0_lambda must be >= 0"):
        nmt_module(gates={"types": ["encoder_self"], "l0_lambda": -0.1})
    with pytest.raises(ValueError, match=r"l0_lambda must be >= 0 for every attention type, got \{'decoder_self'"):
        nmt_module(gates={"types": ["decoder_self"], "l0_lambda": {"decoder_self": -1.0}})
    with pytest.raises(ValueError, match="unknown attention type"):
        nmt_module(gates={"types": ["encoder_self"], "l0_lambda": {"encoder_cross": 0.1}})
    ungated = nmt_module(gates={"types": ["encoder_self"], "l0_lambda": {"encoder_self": 0.1, "decoder_self": 0.1}})
    with pytest.raises(ValueError, match=r"l0_lambda > 0 for \['decoder_self'\] but those types have no head gates"):
        ungated.training_step(nmt_batch(), 0)
    with pytest.raises(ValueError, match="gates.types must name at least one attention type"):
        nmt_module(gates={"l0_lambda": 0.1})
    with pytest.raises(ValueError, match="unknown attention type"):
        nmt_module(gates={"types": ["encoder_cross"]})


# --- clear errors instead of size mismatches --------------------------------------------------

def test_compressed_weights_into_dense_module_is_a_clear_error(tmp_path: Path) -> None:
    module = nmt_module()
    compress_nmt(module)
    dense = nmt_module()
    with pytest.raises(ValueError, match=r"do not fit TranslationModule: shapes differ \(model\.decoder\.0\.self"
                                         r"_attn\.qkv_proj\.weight: \(12, 16\) in the checkpoint vs \(48, 16\)"):
        dense.load_state_dict(module.state_dict())
    with pytest.raises(ValueError, match="'compression' spec"):
        dense.load_state_dict(module.state_dict(), strict=False)  # shapes still count without strict

    ckpt = save_like_lightning(module, tmp_path / "c.ckpt")
    del ckpt[SPEC_KEY]  # a checkpoint that lost its spec: our error, not torch's size mismatch
    torch.save(ckpt, tmp_path / "nospec.ckpt")
    with pytest.raises(ValueError, match="missing from the checkpoint: .*ffn.fc1.weight"):
        TranslationModule.load_from_checkpoint(tmp_path / "nospec.ckpt", weights_only=False)

    with pytest.raises(ValueError, match="already compressed as"):
        apply_compression_spec(module.model, {"sharing": {"decoder": {"k": 1, "n": 2}}})
    with pytest.raises(ValueError, match="unknown compression spec entries"):
        apply_compression_spec(dense.model, {"quantization": {}})


# --- init_from ----------------------------------------------------------------------------------

def test_init_from_compressed_checkpoint_then_gate_fine_tune(tmp_path: Path) -> None:
    source = nmt_module(seed=5)
    compress_nmt(source)
    save_like_lightning(source, tmp_path / "converged.ckpt")

    student = nmt_module(seed=9, init_from=str(tmp_path / "converged.ckpt"),
                         gates={"types": ["encoder_self"], "l0_lambda": 0.05})
    assert compression_spec(student.model) == {**compression_spec(source.model), "gates": ["encoder_self"]}
    # gates start open (eval value 1): the gated student computes what the converged model does
    torch.testing.assert_close(nmt_out(student), nmt_out(source), atol=1e-6, rtol=0)

    ckpt = save_like_lightning(student, tmp_path / "student.ckpt")
    assert ckpt["hyper_parameters"]["init_from"] is None  # reload must not need the source file
    assert student.hparams.init_from == str(tmp_path / "converged.ckpt")
    (tmp_path / "converged.ckpt").unlink()
    loaded = TranslationModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False)
    torch.testing.assert_close(nmt_out(loaded), nmt_out(student), atol=0, rtol=0)


def test_init_from_errors(tmp_path: Path) -> None:
    save_like_lightning(nmt_module(), tmp_path / "small.ckpt")
    with pytest.raises(ValueError, match=r"init_from checkpoint .*small.ckpt'.s weights do not fit .*shapes differ"):
        TranslationModule(arch={**ARCH, "d_ff": 32}, data_spec=DATA_SPEC, init_from=str(tmp_path / "small.ckpt"))
    with pytest.raises(ValueError, match="does not exist"):
        nmt_module(init_from=str(tmp_path / "missing.ckpt"))


# --- real trainer: resume rebuilds the compressed network before weights and optimizer ---------

def test_trainer_resume_of_compressed_gated_checkpoint(tmp_path: Path) -> None:
    loader = DataLoader([nmt_batch()] * 4, batch_size=None)
    opts = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    module = nmt_module(gates={"types": ["encoder_self"], "l0_lambda": 0.05})
    compress_nmt(module)
    trainer = L.Trainer(max_steps=1, **opts)
    trainer.fit(module, loader)
    assert "train/l0" in trainer.callback_metrics and "train/heads_open_encoder_self" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "step1.ckpt")

    fresh = nmt_module(seed=7, gates={"types": ["encoder_self"], "l0_lambda": 0.05})  # dense, as train.py builds it
    resumed = L.Trainer(max_steps=2, **opts)
    resumed.fit(fresh, loader, ckpt_path=tmp_path / "step1.ckpt")
    assert resumed.global_step == 2
    assert compression_spec(fresh.model) == compression_spec(module.model)
    optimised = {id(p) for group in resumed.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in fresh.model.parameters()}
