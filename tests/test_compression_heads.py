"""Attention-head compression: prune = mask equivalence, gates, Taylor scores, head configs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.gates import HardConcreteGates, attach_gates, attached_gates, detach_gates, l0_penalty
from compression.heads import ATTENTION_TYPES, attention_modules
from compression.importance import random_importance, taylor_importance
from compression.prune import apply_head_config, head_config, heads_to_keep, prune_heads, prune_model
from core.bert import BertConfig, BertModel
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer

TOL = 1e-5
NMT_TYPES = ("encoder_self", "decoder_self", "decoder_cross")


def tiny_nmt(seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(vocab_size=23, d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2,
                        dropout=0.1, max_len=16)
    return Seq2SeqTransformer(cfg).eval()


def nmt_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src, tgt_in, tgt_out with padding (pad id 0) at the end of some rows."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 23, (3, 7), generator=g)
    src[1, 4:] = 0
    src[2, 6:] = 0
    tgt = torch.randint(4, 23, (3, 6), generator=g)
    tgt[0, 5:] = 0
    tgt[2, 3:] = 0
    return src, tgt[:, :-1], tgt[:, 1:]


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=24, max_position_embeddings=16)
    model = BertModel(cfg).eval()
    with torch.no_grad():  # BERT's 0.02 init makes every head nearly irrelevant: use a scale that tests something
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def bert_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 31, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids, mask


def mask_like_plan(model: nn.Module, plan: dict[str, list[list[int]]]) -> None:
    """Set head_mask so that exactly the heads kept by `plan` are 1 and the rest 0."""
    for kind, layers in plan.items():
        for attn, keep in zip(attention_modules(model, [kind])[kind], layers, strict=True):
            mask = torch.zeros(attn.num_heads)
            mask[keep] = 1.0
            attn.head_mask = mask


def nmt_loss(model: nn.Module, batch) -> torch.Tensor:
    src, tgt_in, tgt_out = batch
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=0)


# --- enumeration ------------------------------------------------------------------------------


def test_attention_types_found_by_walking_any_wrapper():
    from nmt.module import TranslationModule

    mods = attention_modules(tiny_nmt())
    assert list(mods) == list(NMT_TYPES) and all(len(v) == 2 for v in mods.values())
    assert all(a.cross for a in mods["decoder_cross"]) and not any(a.cross for a in mods["decoder_self"])
    wrapped = TranslationModule(arch=tiny_nmt().cfg)  # LightningModule holding `.model`
    assert [len(v) for v in attention_modules(wrapped).values()] == [2, 2, 2]
    holder = nn.ModuleDict({"bert": tiny_bert()})  # tagger-like wrapper
    assert list(attention_modules(holder)) == ["bert_self"]


def test_unknown_or_absent_attention_type_is_a_clear_error():
    model = tiny_nmt()
    with pytest.raises(ValueError, match="unknown attention type.*valid types are") as err:
        attention_modules(model, ["encoder"])
    assert all(t in str(err.value) for t in ATTENTION_TYPES)
    with pytest.raises(ValueError, match="has no attention of type"):
        attention_modules(model, ["bert_self"])
    with pytest.raises(ValueError, match="unknown attention type"):
        attach_gates(model, ["cross"])
    with pytest.raises(ValueError, match="unknown attention type"):
        prune_model(model, {"enc_self": [[0], [0]]})


# --- physical removal == masking ---------------------------------------------------------------

PLANS = {
    "encoder_self": [[0, 2], [3]],
    "decoder_self": [[1, 2, 3], [0]],
    "decoder_cross": [[2], [0, 1]],
}


@pytest.mark.parametrize("kind", NMT_TYPES)
def test_pruned_nmt_equals_masked(kind):
    dense = tiny_nmt()
    batch = nmt_batch()
    plan = {kind: PLANS[kind]}
    masked = copy.deepcopy(dense)
    mask_like_plan(masked, plan)
    pruned = prune_model(copy.deepcopy(dense), plan)
    assert [a.num_heads for a in attention_modules(pruned)[kind]] == [len(k) for k in PLANS[kind]]
    with torch.no_grad():
        expected, got, full = masked(*batch[:2]), pruned(*batch[:2]), dense(*batch[:2])
    assert (got - expected).abs().max() <= TOL
    assert (full - expected).abs().max() > 1e-3  # the pruned heads did matter
    n_dense = sum(p.numel() for p in dense.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < n_dense


def test_pruned_nmt_all_types_at_once_and_cached_decoding():
    dense, batch = tiny_nmt(), nmt_batch()
    masked = copy.deepcopy(dense)
    mask_like_plan(masked, PLANS)
    pruned = prune_model(copy.deepcopy(dense), PLANS)
    with torch.no_grad():
        assert (pruned(*batch[:2]) - masked(*batch[:2])).abs().max() <= TOL
        # step-by-step decoding with KV caches goes through the sliced projections too
        src, tgt_in, _ = batch
        memory, mmask = pruned.encode(src)
        cache = pruned.new_cache()
        steps = [pruned.decode(tgt_in[:, t : t + 1], memory, mmask, cache, offset=t) for t in range(tgt_in.shape[1])]
        assert (torch.cat(steps, 1) - pruned(src, tgt_in)).abs().max() <= TOL


def test_pruned_bert_equals_masked():
    dense = tiny_bert()
    ids, amask = bert_batch()
    plan = {"bert_self": [[1], [0, 3]]}
    masked = copy.deepcopy(dense)
    mask_like_plan(masked, plan)
    pruned = prune_model(copy.deepcopy(dense), plan)
    with torch.no_grad():
        expected, got, full = masked(ids, amask), pruned(ids, amask), dense(ids, amask)
    assert (got - expected).abs().max() <= TOL
    assert (full - expected).abs().max() > 1e-3


@pytest.mark.parametrize("kind", [*NMT_TYPES, "bert_self"])
def test_removing_every_head_of_a_layer(kind):
    dense = tiny_bert() if kind == "bert_self" else tiny_nmt()
    plan = {kind: [[], [0, 1, 2, 3]]}
    masked = copy.deepcopy(dense)
    mask_like_plan(masked, plan)
    pruned = prune_model(copy.deepcopy(dense), plan)
    attn = attention_modules(pruned, [kind])[kind][0]
    assert attn.num_heads == 0 and attn.out_proj.weight.shape[1] == 0
    with torch.no_grad():
        if kind == "bert_self":
            ids, amask = bert_batch()
            got, expected = pruned(ids, amask), masked(ids, amask)
        else:
            batch = nmt_batch()
            got, expected = pruned(*batch[:2]), masked(*batch[:2])
    assert (got - expected).abs().max() <= TOL


def test_prune_heads_rejects_bad_indices_and_leaves_model_unchanged():
    model = tiny_nmt()
    attn = attention_modules(model)["encoder_self"][0]
    for keep in ([4], [-1], [0, 0], [1.0]):
        with pytest.raises(ValueError, match="out of range|duplicate"):
            prune_heads(attn, keep)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="encoder_self layer 1.*out of range"):
        prune_model(model, {"encoder_self": [[0], [7]]})
    with pytest.raises(ValueError, match="has 1 layers, the model has 2"):
        prune_model(model, {"encoder_self": [[0]]})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prune_heads_slices_head_mask_and_gates_along():
    model = tiny_nmt()
    gates = attach_gates(model, ["decoder_cross"])["decoder_cross"][0]
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    prune_heads(attention_modules(model)["decoder_cross"][0], [1, 3])
    assert torch.equal(attached_gates(model)["decoder_cross"][0].log_alpha.detach(), torch.tensor([0.2, 0.4]))
    attn = attention_modules(model)["encoder_self"][1]
    attn.head_mask = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    prune_heads(attn, [0, 2])
    assert torch.equal(attn.head_mask, torch.tensor([[1.0, 3.0]]))


# --- gates -------------------------------------------------------------------------------------


def test_eval_gates_are_deterministic_and_match_formula():
    g = HardConcreteGates(6)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([-5.0, -1.0, -0.2, 0.0, 0.7, 4.0]))
    g.eval()
    expected = (torch.sigmoid(g.log_alpha.detach()) * 1.2 - 0.1).clamp(0, 1)
    assert torch.equal(g(), g())
    torch.testing.assert_close(g().detach(), expected)
    assert g()[0] == 0.0 and g()[-1] == 1.0  # the stretch makes exact 0 / 1 reachable


def test_training_gates_are_stochastic_and_p_open_matches_samples():
    torch.manual_seed(0)
    g = HardConcreteGates(40_000, init_log_alpha=0.5).train()
    a, b = g(), g()
    assert not torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert (a == 0).any() and (a == 1).any()
    # Monte Carlo: the fraction of non-zero samples is P(gate != 0) = p_open
    assert (a > 0).float().mean().item() == pytest.approx(g.p_open()[0].item(), abs=0.01)


def test_l0_penalty_and_gradient_match_closed_form():
    g = HardConcreteGates(5)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([-3.0, -0.5, 0.0, 1.5, 3.0], dtype=torch.float64).float())
    la = g.log_alpha.detach().double()
    shift = (2.0 / 3.0) * math.log(0.1 / 1.1)
    p = torch.sigmoid(la - shift)
    penalty = g.l0_penalty()
    assert penalty.item() == pytest.approx(p.sum().item(), rel=1e-6)
    (grad,) = torch.autograd.grad(penalty, g.log_alpha)
    torch.testing.assert_close(grad.double(), p * (1 - p), rtol=1e-5, atol=1e-7)
    # the dict-level penalty sums every attached gate
    model = tiny_nmt()
    gates = attach_gates(model, ["encoder_self", "decoder_cross"])
    total = sum(x.l0_penalty().item() for layers in gates.values() for x in layers)
    assert l0_penalty(gates).item() == pytest.approx(total)
    assert l0_penalty(gates).item() == pytest.approx(4 * 4 * torch.sigmoid(torch.tensor(3.0 - shift)).item())


def test_attached_gates_drive_head_mask_train_and_detach():
    dense, batch = tiny_nmt(), nmt_batch()
    model = copy.deepcopy(dense)
    gates = attach_gates(model, ["encoder_self"])
    assert set(gates) == {"encoder_self"} and all(g.num_heads == 4 for g in gates["encoder_self"])
    assert "encoder.0.self_attn.head_gates.log_alpha" in model.state_dict()
    with torch.no_grad():  # init_log_alpha=3 opens every gate fully: starts at the dense model
        assert (model(*batch[:2]) - dense(*batch[:2])).abs().max() <= TOL
        gates["encoder_self"][0].log_alpha.copy_(torch.tensor([-4.0, 0.0, 1.0, 4.0]))
    reference = copy.deepcopy(dense)
    attention_modules(reference)["encoder_self"][0].head_mask = (torch.sigmoid(torch.tensor(
        [-4.0, 0.0, 1.0, 4.0])) * 1.2 - 0.1).clamp(0, 1)
    with torch.no_grad():
        assert (model(*batch[:2]) - reference(*batch[:2])).abs().max() <= TOL
    with pytest.raises(ValueError, match="already has gates"):
        attach_gates(model, ["encoder_self"])
    model.train()
    loss = nmt_loss(model, batch) + 0.05 * l0_penalty(attached_gates(model))
    loss.backward()
    assert all(g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0 for g in gates["encoder_self"])
    removed = detach_gates(model)
    assert removed["encoder_self"][0] is gates["encoder_self"][0]
    assert attached_gates(model) == {} and "encoder.0.self_attn.head_gates.log_alpha" not in model.state_dict()
    model.eval()
    with torch.no_grad():
        assert (model(*batch[:2]) - dense(*batch[:2])).abs().max() <= TOL


# --- importance --------------------------------------------------------------------------------


def test_taylor_importance_equals_finite_differences():
    model = tiny_nmt().double()
    batch = nmt_batch()
    raw = taylor_importance(model, [batch], nmt_loss, normalise=False)
    eps = 1e-5
    for kind in NMT_TYPES:
        for layer, attn in enumerate(attention_modules(model)[kind]):
            for h in range(attn.num_heads):
                diffs = []
                for sign in (1.0, -1.0):
                    mask = torch.ones(4, dtype=torch.float64)
                    mask[h] += sign * eps
                    attn.head_mask = mask
                    with torch.no_grad():
                        diffs.append(nmt_loss(model, batch).item())
                attn.head_mask = None
                fd = abs(diffs[0] - diffs[1]) / (2 * eps)
                assert raw[kind][layer, h].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_taylor_importance_accumulates_normalises_and_restores():
    model = tiny_nmt().train()
    b1, b2 = nmt_batch(1), nmt_batch(5)
    one = taylor_importance(model, [b1], nmt_loss, normalise=False)
    two = taylor_importance(model, [b2], nmt_loss, normalise=False)
    both = taylor_importance(model, [b1, b2], nmt_loss, normalise=False)
    for kind in NMT_TYPES:
        torch.testing.assert_close(both[kind], one[kind] + two[kind])
    norm = taylor_importance(model, [b1, b2], nmt_loss, types=["decoder_cross"])
    assert list(norm) == ["decoder_cross"] and norm["decoder_cross"].shape == (2, 4)
    torch.testing.assert_close(norm["decoder_cross"].norm(dim=1), torch.ones(2))
    torch.testing.assert_close(norm["decoder_cross"], both["decoder_cross"]
                               / both["decoder_cross"].norm(dim=1, keepdim=True))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(a.head_mask is None for layers in attention_modules(model).values() for a in layers)
    with pytest.raises(ValueError, match="no batches"):
        taylor_importance(model, [], nmt_loss)
    attach_gates(model, ["encoder_self"])
    with pytest.raises(ValueError, match="detach_gates"):
        taylor_importance(model, [b1], nmt_loss)


def test_taylor_importance_on_pruned_model_pads_with_nan():
    model = prune_model(tiny_nmt(), {"encoder_self": [[], [1, 2]]})
    scores = taylor_importance(model, [nmt_batch()], nmt_loss, types=["encoder_self"])["encoder_self"]
    assert scores.shape == (2, 2) and torch.isnan(scores[0]).all() and not torch.isnan(scores[1]).any()
    plan = heads_to_keep({"encoder_self": scores}, 1)
    assert plan["encoder_self"][0] == [] and len(plan["encoder_self"][1]) == 1


def test_random_importance_is_seeded():
    model = tiny_nmt()
    a, b, c = random_importance(model, seed=3), random_importance(model, seed=3), random_importance(model, seed=4)
    assert list(a) == list(NMT_TYPES) and a["decoder_self"].shape == (2, 4)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["encoder_self"], c["encoder_self"])


def test_heads_to_keep_global_per_type_and_errors():
    scores = {
        "encoder_self": torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.7]]),
        "decoder_cross": torch.tensor([[0.3, 0.05, float("nan")]]),
    }
    assert heads_to_keep(scores, 3) == {"encoder_self": [[1, 2], [0, 2]], "decoder_cross": [[0]]}
    assert heads_to_keep(scores, 0.5) == heads_to_keep(scores, 4)  # 8 real heads
    assert heads_to_keep(scores, 0) == {"encoder_self": [[0, 1, 2], [0, 1, 2]], "decoder_cross": [[0, 1]]}
    assert heads_to_keep(scores, {"encoder_self": 2}) == {"encoder_self": [[1, 2], [0, 2]], "decoder_cross": [[0, 1]]}
    assert heads_to_keep(scores, {"decoder_cross": 1.0})["decoder_cross"] == [[]]
    with pytest.raises(ValueError, match="cannot prune 9 heads, there are only 8"):
        heads_to_keep(scores, 9)
    with pytest.raises(ValueError, match="cannot prune 3 heads, there are only 2"):
        heads_to_keep(scores, {"decoder_cross": 3})
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        heads_to_keep(scores, 1.5)
    with pytest.raises(ValueError, match="no importance scores"):
        heads_to_keep(scores, {"decoder_self": 1})
    with pytest.raises(ValueError, match="unknown attention type"):
        heads_to_keep(scores, {"self": 1})


# --- head config / checkpoint round trip --------------------------------------------------------


def test_head_config_checkpoint_round_trip(tmp_path):
    model, batch = tiny_nmt(), nmt_batch()
    prune_model(model, {"encoder_self": [[0, 2, 3], [1]], "decoder_cross": [[], [0, 3]]})
    # a second, iterative round: indices are into the current heads, the config stays in original ones
    prune_model(model, {"encoder_self": [[0, 2], [0]]})
    cfg = head_config(model)
    assert cfg == {"encoder_self": [[0, 3], [1]], "decoder_self": [[0, 1, 2, 3]] * 2,
                   "decoder_cross": [[], [0, 3]]}
    torch.save({"state_dict": model.state_dict(), "heads": cfg, "arch": model.cfg}, tmp_path / "pruned.pt")

    ckpt = torch.load(tmp_path / "pruned.pt", weights_only=False)
    fresh = Seq2SeqTransformer(ckpt["arch"]).eval()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(ckpt["state_dict"])  # dense shapes do not take a pruned state dict
    apply_head_config(fresh, ckpt["heads"])
    fresh.load_state_dict(ckpt["state_dict"])
    assert head_config(fresh) == cfg
    with torch.no_grad():
        assert torch.equal(fresh(*batch[:2]), model(*batch[:2]))
    with pytest.raises(ValueError, match=r"heads \[1\] are not in the model"):
        apply_head_config(fresh, {"encoder_self": [[0, 1], [1]]})


def test_bert_head_config_round_trip():
    model = prune_model(tiny_bert(), {"bert_self": [[3], []]})
    fresh = apply_head_config(BertModel(model.cfg).eval(), head_config(model))
    fresh.load_state_dict(model.state_dict())
    ids, amask = bert_batch()
    with torch.no_grad():
        assert torch.equal(fresh(ids, amask), model(ids, amask))

