"""SVD factorisation, cross-layer sharing and the size report on tiny NMT and BERT models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compression.factorize import (
    FactorizedEmbedding,
    FactorizedLinear,
    RankTooHighError,
    activation_aware_svd,
    count_parameters,
    factorize_embedding,
    factorize_linears,
    input_second_moments,
    select_rank,
    token_frequency_weights,
)
from compression.measure import parameter_counts, size_report
from compression.sharing import SharedLayerStack, share_layers
from core.bert import BertConfig, BertModel
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer

TINY_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_NMT = dict(vocab_size=40, d_model=16, num_heads=2, d_ff=32, encoder_layers=2, decoder_layers=2,
                dropout=0.0, max_len=32)


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**TINY_BERT)).eval()


def tiny_nmt() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(Seq2SeqConfig(**TINY_NMT)).eval()


def bert_batch(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 50, (batch, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, 5:], mask[0, 5:] = 0, 0
    return ids, mask


def nmt_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    src, tgt = torch.randint(4, 40, (2, 6), generator=g), torch.randint(4, 40, (2, 5), generator=g)
    src[1, 4:], tgt[1, 3:] = 0, 0
    return src, tgt


# --- FactorizedLinear ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_full_rank_linear_reproduces_dense(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(shape[1], shape[0])
    fact = FactorizedLinear.from_linear(dense, min(shape), allow_full_rank=True)
    x = torch.randn(3, 5, shape[1])
    torch.testing.assert_close(fact(x), dense(x), atol=1e-5, rtol=0)


def test_rank_r_error_is_eckart_young_optimum() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(8, 12)
    s = torch.linalg.svdvals(dense.weight.double())
    for r in (1, 3, 6):
        fact = FactorizedLinear.from_linear(dense, r)
        assert fact.U.shape == (12, r) and fact.V.shape == (r, 8)
        err2 = (dense.weight.double() - fact.weight.double()).square().sum()
        assert err2.item() == pytest.approx(s[r:].square().sum().item(), rel=1e-4)
        torch.testing.assert_close(fact.bias, dense.bias)


def test_energy_fraction_selects_smallest_sufficient_rank() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])  # energies 16, 4, 1, 0.25 of 21.25
    assert select_rank(s, 0.5) == 1  # 16 / 21.25 = 0.753
    assert select_rank(s, 0.9) == 2  # 20 / 21.25 = 0.941
    assert select_rank(s, 0.95) == 3  # 21 / 21.25 = 0.988
    assert select_rank(s, 1.0) == 4
    assert select_rank(s, 3) == 3
    q1, _ = torch.linalg.qr(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)))
    dense = nn.Linear(6, 10)
    with torch.no_grad():
        dense.weight.copy_(q1 @ torch.diag(s) @ q2.t())
    assert FactorizedLinear.from_linear(dense, 0.9).rank == 2


def test_bad_ranks_give_clear_errors() -> None:
    dense = nn.Linear(8, 12)
    for rank in (8, 9, 1.0):  # 1.0 keeps all energy = full rank
        with pytest.raises(RankTooHighError, match=r"rank \d+ >= min\(12, 8\) = 8.*keep this layer dense"):
            FactorizedLinear.from_linear(dense, rank)
    with pytest.raises(ValueError, match="energy fraction must be in"):
        FactorizedLinear.from_linear(dense, 1.5)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        FactorizedLinear.from_linear(dense, 0)
    with pytest.raises(TypeError, match="rank must be an int"):
        FactorizedLinear.from_linear(dense, True)


# --- factorize_linears --------------------------------------------------------------------

def _check_report(model: nn.Module, report: dict, before: int) -> None:
    assert report["params_before"] == before
    assert report["params_after"] == count_parameters(model)
    saved = sum(v["params_before"] - v["params_after"] for v in report["layers"].values())
    assert before - report["params_after"] == saved > 0
    for name, entry in report["layers"].items():
        module = model.get_submodule(name)
        assert isinstance(module, FactorizedLinear) and module.rank == entry["rank"]


def test_factorize_linears_on_nmt() -> None:
    model = tiny_nmt()
    before = count_parameters(model)
    report = factorize_linears(model, r"ffn\.fc[12]$", rank=4)
    assert len(report["layers"]) == 8  # 2 encoder + 2 decoder layers x fc1, fc2
    assert all(v["rank"] == 4 for v in report["layers"].values())
    # fc1 32x16 + 32 bias -> 4*(32+16) + 32
    assert report["layers"]["encoder.0.ffn.fc1"]["params_after"] == 4 * 48 + 32
    _check_report(model, report, before)
    assert isinstance(model.encoder[0].self_attn.qkv_proj, nn.Linear)
    src, tgt = nmt_batch()
    assert model(src, tgt).shape == (2, 5, 40)


def test_factorize_linears_on_bert() -> None:
    model = tiny_bert()
    before = count_parameters(model)
    report = factorize_linears(model, r"^layers\.\d+\.(self_attn|ffn)\.", rank=0.5)
    assert len(report["layers"]) == 3 * 4 and report["dense"] == []
    _check_report(model, report, before)
    ids, mask = bert_batch()
    out = model(ids, mask)
    assert out.shape == (2, 7, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.layers[0].ffn.fc1.U.grad is not None


def test_factorize_linears_bad_pattern_and_atomic_rank_error() -> None:
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"pattern 'decoder\\.fc' matches no nn.Linear.*layers\.0\.self_attn"):
        factorize_linears(model, r"decoder\.fc", rank=4)
    stack = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    with pytest.raises(RankTooHighError, match="layer '1'.*keep this layer dense"):
        factorize_linears(stack, ".", rank=4)
    assert all(isinstance(m, nn.Linear) for m in stack)  # nothing swapped on error
    report = factorize_linears(stack, ".", rank=4, skip_full_rank=True)
    assert report["dense"] == ["1"] and list(report["layers"]) == ["0"]
    with pytest.warns(UserWarning, match="larger than dense.*: 0"):
        factorize_linears(nn.Sequential(nn.Linear(16, 16)), ".", rank=12)
    assert isinstance(stack[0], FactorizedLinear) and isinstance(stack[1], nn.Linear)


# --- activation-aware factorisation -------------------------------------------------------

def _correlated_inputs(n_in: int, n: int, seed: int = 0) -> torch.Tensor:
    """Inputs (n x n_in) whose directions have very different scales, as real activations do."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n_in, dtype=torch.float64)
    return torch.randn(n, n_in, generator=g, dtype=torch.float64) @ mix.T + 0.5


def test_activation_aware_svd_is_the_best_rank_r_fit_of_the_outputs() -> None:
    torch.manual_seed(0)
    weight = torch.randn(12, 10, dtype=torch.float64)
    x = _correlated_inputs(10, 300)
    moment = x.T @ x
    u, s, vh = activation_aware_svd(weight, moment, 4, damping=0.0)
    error = ((weight - u @ torch.diag(s) @ vh) @ x.T).norm() ** 2
    whole = torch.linalg.svdvals(weight @ torch.linalg.cholesky(moment))
    assert torch.allclose(error, whole[4:].square().sum(), rtol=1e-8)  # Eckart-Young on W L
    pu, ps, pvh = torch.linalg.svd(weight, full_matrices=False)
    plain_error = ((weight - pu[:, :4] @ torch.diag(ps[:4]) @ pvh[:4]) @ x.T).norm() ** 2
    assert error < 0.5 * plain_error  # the plain SVD spends rank on directions the inputs barely use
    for _ in range(20):  # no other rank-4 matrix fits the outputs better
        other = (u + 1e-3 * torch.randn_like(u)) @ torch.diag(s) @ (vh + 1e-3 * torch.randn_like(vh))
        assert ((weight - other) @ x.T).norm() ** 2 >= error - 1e-9
    with pytest.raises(ValueError, match="second moment of the matrix must be 10x10"):
        activation_aware_svd(weight, moment[:3, :3], 4)


def test_factorize_linears_with_input_moments() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 6))
    x = _correlated_inputs(10, 256).float()
    batches = list(x.split(64))
    moments = input_second_moments(net, r"^[02]$", batches, net)
    assert set(moments) == {"0", "2"}
    assert torch.allclose(moments["0"], x.double().T @ x.double(), rtol=1e-5)
    hidden = torch.relu(net[0](x)).double()
    assert torch.allclose(moments["2"], hidden.T @ hidden, rtol=1e-5)
    assert all(not m._forward_pre_hooks for m in net)  # hooks removed

    with torch.no_grad():
        dense_out = net(x)
        plain, aware = copy.deepcopy(net), copy.deepcopy(net)
        factorize_linears(plain, r"^0$", rank=3)
        factorize_linears(aware, r"^0$", rank=3, input_moments=moments)
        assert (aware[0](x) - net[0](x)).norm() < (plain[0](x) - net[0](x)).norm()
        assert (aware(x) - dense_out).norm() < (plain(x) - dense_out).norm()
    with pytest.raises(ValueError, match="no statistics for 1 matched layer.*'2'"):
        factorize_linears(copy.deepcopy(net), r"^[02]$", rank=3, input_moments={"0": moments["0"]})
    with pytest.raises(ValueError, match="pattern 'nothing' matches no nn.Linear"):
        input_second_moments(net, "nothing", batches, net)


# --- FactorizedEmbedding ------------------------------------------------------------------

def test_full_rank_embedding_reproduces_dense_and_keeps_padding() -> None:
    torch.manual_seed(0)
    dense = nn.Embedding(30, 8, padding_idx=0)
    fact = FactorizedEmbedding.from_embedding(dense, 8, allow_full_rank=True)
    ids = torch.tensor([[0, 3, 29, 7]])
    torch.testing.assert_close(fact(ids), dense(ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(fact.weight, dense.weight, atol=1e-5, rtol=0)
    assert fact.padding_idx == 0 and fact.num_embeddings == 30 and fact.embedding_dim == 8
    assert not fact.table.weight[0].any()
    fact(ids).sum().backward()
    assert not fact.table.weight.grad[0].any()  # padding row gets no gradient
    with pytest.raises(RankTooHighError, match="keep this layer dense"):
        FactorizedEmbedding.from_embedding(dense, 8)


def test_rank_r_embedding_is_eckart_young_optimum() -> None:
    torch.manual_seed(0)
    dense = nn.Embedding(30, 8)
    s = torch.linalg.svdvals(dense.weight.double())
    fact = FactorizedEmbedding.from_embedding(dense, 3)
    err2 = (dense.weight.double() - fact.weight.double()).square().sum()
    assert err2.item() == pytest.approx(s[3:].square().sum().item(), rel=1e-4)


def test_frequency_weighted_embedding_is_the_weighted_optimum() -> None:
    torch.manual_seed(0)
    dense = nn.Embedding(30, 8)
    weights = token_frequency_weights([[1, 1, 1, 2, 5], [5, 5, 5, 5, 29]], 30)
    assert weights[5].item() == pytest.approx(6**0.5) and weights[0].item() == 1.0  # sqrt(1 + 5 occurrences)
    assert token_frequency_weights([[5, 5]], 30, prior=10.0)[5].item() == pytest.approx(12**0.5)
    with pytest.raises(ValueError, match="prior must be > 0"):
        token_frequency_weights([[5]], 30, prior=0.0)
    w = weights.double()[:, None]
    fact = FactorizedEmbedding.from_embedding(dense, 3, row_weights=weights)
    plain = FactorizedEmbedding.from_embedding(dense, 3)

    def weighted_err2(f: FactorizedEmbedding) -> float:
        return ((dense.weight.double() - f.weight.double()) * w).square().sum().item()

    # the optimum of the weighted problem is the tail of the weighted matrix's spectrum ...
    s = torch.linalg.svdvals(dense.weight.double() * w)
    assert weighted_err2(fact) == pytest.approx(s[3:].square().sum().item(), rel=1e-4)
    assert weighted_err2(fact) < weighted_err2(plain)  # ... which the unweighted SVD misses
    # full rank with weights is still exact
    full = FactorizedEmbedding.from_embedding(dense, 8, allow_full_rank=True, row_weights=weights)
    torch.testing.assert_close(full.weight, dense.weight, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must be 30 positive numbers"):
        FactorizedEmbedding.from_embedding(dense, 3, row_weights=torch.zeros(30))


def test_nmt_tied_projection_after_factorize_embedding() -> None:
    src, tgt = nmt_batch()
    dense = tiny_nmt()
    full = tiny_nmt()
    factorize_embedding(full, 16, allow_full_rank=True)
    torch.testing.assert_close(full(src, tgt), dense(src, tgt), atol=1e-5, rtol=0)

    model = tiny_nmt()
    before = count_parameters(model)
    report = factorize_embedding(model, 4)
    assert isinstance(model.embed.tokens, FactorizedEmbedding) and model.embed.tokens.padding_idx == 0
    assert report == {"name": "embed.tokens", "rank": 4, "params_before": before,
                      "params_after": before - 40 * 16 + 40 * 4 + 4 * 16}
    assert report["params_after"] == count_parameters(model)
    logits = model(src, tgt)
    assert logits.shape == (2, 5, 40)
    hidden = torch.randn(1, 2, 16)
    torch.testing.assert_close(model.project(hidden), hidden @ (model.embed.tokens.table.weight
                                                                  @ model.embed.tokens.proj).t())
    logits.sum().backward()
    assert model.embed.tokens.proj.grad is not None and model.embed.tokens.table.weight.grad is not None
    with pytest.raises(ValueError, match="already factorised"):
        factorize_embedding(model, 4)


def test_bert_factorize_embedding() -> None:
    ids, mask = bert_batch()
    dense, full = tiny_bert(), tiny_bert()
    factorize_embedding(full, 16, allow_full_rank=True)
    torch.testing.assert_close(full(ids, mask), dense(ids, mask), atol=1e-5, rtol=0)
    wrapper = nn.Module()
    wrapper.bert = tiny_bert()
    report = factorize_embedding(wrapper, 0.5)
    emb = wrapper.bert.embeddings.word_embeddings
    assert report["name"] == "bert.embeddings.word_embeddings" and emb.rank == report["rank"] < 16
    assert emb.padding_idx == 0 and emb.num_embeddings == 50
    assert wrapper.bert(ids, mask).shape == (2, 7, 16)
    with pytest.raises(ValueError, match="no token embedding"):
        factorize_embedding(nn.Linear(3, 3), 2)


# --- weight sharing -----------------------------------------------------------------------

def layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def test_shared_stack_parameter_count_and_cycle() -> None:
    model = tiny_bert()
    teacher_layers = model.layers
    per_layer = layer_params(teacher_layers[0])
    before = count_parameters(model)
    stack = share_layers(teacher_layers, k=2, n=5, init_from=[2, 0])
    assert stack.num_parameters() == 2 * per_layer
    model.layers = stack
    assert count_parameters(model) == before - 3 * per_layer + 2 * per_layer
    assert len(stack) == 5 and [stack[i] for i in range(5)] == [stack.layers[i % 2] for i in range(5)]
    assert {k.split(".")[1] for k in stack.state_dict()} == {"0", "1"}
    for name, value in teacher_layers[2].state_dict().items():
        torch.testing.assert_close(stack.layers[0].state_dict()[name], value)

    ids, mask = bert_batch()
    with torch.no_grad():
        states = model(ids, mask, all_hidden_states=True)
        x = model.embeddings(ids)
        key = mask.bool()[:, None, None, :]
        for i in range(5):
            x = stack.layers[i % 2](x, key)
    assert len(states) == 6
    torch.testing.assert_close(states[-1], x)
    torch.testing.assert_close(stack(model.embeddings(ids), key), x)


def test_share_layers_init_and_errors() -> None:
    teacher = tiny_bert().layers
    one = share_layers(teacher, k=1, n=6, init_from=1)
    assert one.num_parameters() == layer_params(teacher[1])
    with torch.no_grad():
        one.layers[0].ffn.fc1.weight.add_(1.0)
    assert not torch.equal(one.layers[0].ffn.fc1.weight, teacher[1].ffn.fc1.weight)  # a copy
    scratch = share_layers(teacher, k=2, n=4, init_from=None)
    assert not torch.equal(scratch.layers[0].ffn.fc1.weight, teacher[0].ffn.fc1.weight)
    with pytest.raises(ValueError, match="need n >= k"):
        share_layers(teacher, k=3, n=2)
    with pytest.raises(ValueError, match="init_from layer 3 does not exist: the stack has 3 layers"):
        share_layers(teacher, k=1, n=2, init_from=3)
    with pytest.raises(ValueError, match="init_from lists 1 teacher layers but k=2"):
        share_layers(teacher, k=2, n=2, init_from=[0])
    with pytest.raises(IndexError):
        SharedLayerStack(list(teacher[:1]), 2)[2]


def test_shared_nmt_decoder_runs_with_caches() -> None:
    model = tiny_nmt()
    model.decoder = share_layers(model.decoder, k=1, n=3, init_from=0)
    src, tgt = nmt_batch()
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = model.new_cache()
    assert len(cache) == 3
    steps = [model.decode(tgt[:, i : i + 1], memory, mask, cache, offset=i) for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# --- size report --------------------------------------------------------------------------

def test_size_report_counts_and_flops() -> None:
    model = tiny_bert()
    report = size_report(model, lambda b: (torch.ones(b, 8, dtype=torch.long),), batch_sizes=(1, 2),
                         repeats=2, warmup=1)
    assert report["params"] == {"total": count_parameters(model), "embedding": (50 + 64 + 2) * 16,
                                "non_embedding": count_parameters(model) - (50 + 64 + 2) * 16}
    linear_flops = 2 * 3 * (16 * 48 + 16 * 16 + 2 * 16 * 32)  # per token, 3 layers
    attention_flops = 3 * 4 * 8 * 16  # QK^T and AV: 2 * 2 * T * d per token and layer, T = 8
    assert report["flops_per_token"] == linear_flops + attention_flops
    assert set(report["latency_ms"]) == {1, 2} and all(v > 0 for v in report["latency_ms"].values())
    factorize_linears(model, r"ffn\.fc", rank=2)
    smaller = size_report(model, lambda b: (torch.ones(b, 8, dtype=torch.long),), batch_sizes=(1,), repeats=1)
    assert smaller["flops_per_token"] < report["flops_per_token"]
    assert model.training is False


def test_parameter_counts_tied_nmt_embedding_once() -> None:
    model = tiny_nmt()
    counts = parameter_counts(model)
    assert counts["total"] == count_parameters(model) and counts["embedding"] == 40 * 16
    factorize_embedding(model, 4)
    assert parameter_counts(model)["embedding"] == 40 * 4 + 4 * 16


# --- rebuilding compressed architectures from a checkpoint ---------------------------------

def test_compressed_checkpoint_round_trip(tmp_path) -> None:
    from compression.factorize import apply_factorization_spec, factorization_spec
    from compression.sharing import apply_sharing_spec, sharing_spec

    model = tiny_bert()
    model.layers = share_layers(model.layers, k=1, n=4, init_from=2)
    factorize_linears(model, r"ffn\.fc1$", rank=3)
    factorize_embedding(model, 5)
    path = tmp_path / "student.pt"
    torch.save({"state_dict": model.state_dict(), "factorization": factorization_spec(model),
                "sharing": sharing_spec(model)}, path)
    saved = torch.load(path)
    assert saved["factorization"] == {"linears": {"layers.layers.0.ffn.fc1": 3},
                                      "embeddings": {"embeddings.word_embeddings": 5}}
    assert saved["sharing"] == {"layers": {"k": 1, "n": 4}}

    dense = tiny_bert()
    with pytest.raises(RuntimeError, match="Missing key"):
        dense.load_state_dict(saved["state_dict"])
    fresh = tiny_bert()
    apply_sharing_spec(fresh, saved["sharing"])  # sharing first: factorised names live inside the stack
    apply_factorization_spec(fresh, saved["factorization"])
    fresh.load_state_dict(saved["state_dict"])
    fresh.eval()
    ids, mask = bert_batch()
    torch.testing.assert_close(fresh(ids, mask), model(ids, mask), atol=0, rtol=0)
    assert count_parameters(fresh) == count_parameters(model)
    with pytest.raises(ValueError, match="'decoder.0.ffn.fc1' of the checkpoint does not exist"):
        apply_factorization_spec(tiny_bert(), {"linears": {"decoder.0.ffn.fc1": 3}})
    with pytest.raises(ValueError, match="expected a dense nn.ModuleList"):
        apply_sharing_spec(fresh, saved["sharing"])
