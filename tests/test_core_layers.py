"""core.layers directly: pre/post-norm sublayers, FFN, decoder caches, sinusoidal embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from core.layers import DecoderLayer, EncoderLayer, FeedForward, ScaledEmbedding, activation, sinusoidal_positions


def test_feed_forward_is_fc1_act_fc2():
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, "gelu").eval()
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ffn(x), ffn.fc2(torch.nn.functional.gelu(ffn.fc1(x))))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation("swish")


@pytest.mark.parametrize("pre_norm", [True, False])
def test_encoder_layer_pre_and_post_norm(pre_norm):
    torch.manual_seed(0)
    layer = EncoderLayer(8, 2, 12, dropout=0.0, pre_norm=pre_norm).eval()
    x = torch.randn(2, 4, 8)
    attn, ffn, n1, n2 = layer.self_attn, layer.ffn, layer.attn_block.norm, layer.ffn_block.norm
    if pre_norm:
        h = x + attn(n1(x))
        expected = h + ffn(n2(h))
    else:
        h = n1(x + attn(x))
        expected = n2(h + ffn(h))
    torch.testing.assert_close(layer(x), expected)


def test_decoder_layer_step_by_step_equals_full_pass():
    torch.manual_seed(0)
    layer = DecoderLayer(8, 2, 12, dropout=0.0).eval()
    x, memory = torch.randn(2, 5, 8), torch.randn(2, 6, 8)
    full = layer(x, memory)
    cache: dict = {}
    steps = torch.cat([layer(x[:, i : i + 1], memory, cache=cache) for i in range(5)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-6, rtol=1e-5)
    assert set(cache) == {"self", "cross"} and cache["self"]["k"].shape[2] == 5


def test_sinusoidal_table_values():
    table = sinusoidal_positions(10, 6)
    assert table.shape == (10, 6)
    pos, i = 3, 2  # even column 2i uses sin(pos / 10000^(2i/d)), odd columns the cosine
    torch.testing.assert_close(table[pos, 2 * 1], torch.tensor(math.sin(pos / 10000 ** (2 / 6))))
    torch.testing.assert_close(table[pos, 2 * i + 1], torch.tensor(math.cos(pos / 10000 ** (2 * i / 6))))


def test_scaled_embedding_offset_and_length_limit():
    torch.manual_seed(0)
    emb = ScaledEmbedding(20, 6, pad_id=0, dropout=0.0, max_len=8).eval()
    ids = torch.tensor([[5, 0, 7]])
    out = emb(ids, offset=2)
    torch.testing.assert_close(out, emb.tokens(ids) * math.sqrt(6) + sinusoidal_positions(8, 6)[2:5])
    assert torch.equal(emb.tokens.weight[0], torch.zeros(6))  # the pad row starts at zero
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        emb(torch.ones(1, 9, dtype=torch.long))
