"""core.attention.MultiHeadAttention, directly: a reference computation, caches, head masks, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from core.attention import MultiHeadAttention, key_mask


def reference(attn: MultiHeadAttention, x: torch.Tensor, memory: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Attention written out with explicit softmax, per head, from the module's own weights."""
    h, dh = attn.num_heads, attn.head_dim
    if attn.cross:
        q = attn.q_proj(x)
        k, v = attn.kv_proj(memory).chunk(2, dim=-1)
    else:
        q, k, v = attn.qkv_proj(x).chunk(3, dim=-1)
    b, t, s = x.shape[0], x.shape[1], k.shape[1]
    q, k, v = (z.view(b, -1, h, dh).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    allowed = torch.ones(b, 1, t, s, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask
    if causal:
        allowed = allowed & torch.ones(t, s, dtype=torch.bool).tril()
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 16, generator=g), torch.randn(2, 7, 16, generator=g)


def test_self_attention_matches_explicit_softmax_with_padding_mask(inputs):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x, _ = inputs
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    torch.testing.assert_close(attn(x, mask=key_mask(keep)), reference(attn, x, mask=key_mask(keep)))


def test_cross_attention_matches_reference_and_caches_the_memory(inputs):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, cross=True).eval()
    x, memory = inputs
    cache: dict = {}
    torch.testing.assert_close(attn(x, memory, cache=cache), reference(attn, x, memory))
    assert cache["k"].shape == (2, 4, 7, 4)
    # a second call reads the projected memory from the cache, not the memory argument
    torch.testing.assert_close(attn(x, memory * 0, cache=cache), reference(attn, x, memory))


def test_incremental_causal_decoding_equals_the_full_causal_pass(inputs):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x, _ = inputs
    full = attn(x, is_causal=True)
    torch.testing.assert_close(full, reference(attn, x, causal=True))
    cache: dict = {}
    steps = [attn(x[:, i : i + 1], is_causal=True, cache=cache) for i in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    # two steps at once after a cached prefix: the causal tail mask
    cache = {}
    attn(x[:, :3], is_causal=True, cache=cache)
    torch.testing.assert_close(attn(x[:, 3:], is_causal=True, cache=cache), full[:, 3:])


def test_head_mask_zero_equals_removing_the_head_contribution(inputs):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, head_dim=3).eval()
    x, _ = inputs
    attn.head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5])
    out = attn(x)
    attn.head_mask = None
    with torch.no_grad():  # the same by zeroing / halving the heads' out_proj input columns
        w = attn.out_proj.weight
        w[:, 3:6] = 0
        w[:, 9:12] *= 0.5
    torch.testing.assert_close(out, attn(x))
    per_example = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    attn.head_mask = per_example
    torch.testing.assert_close(attn(x)[1], attn.out_proj.bias.expand(5, 16))


def test_every_head_pruned_leaves_the_output_bias():
    attn = MultiHeadAttention(16, 0, head_dim=4)
    out = attn(torch.randn(2, 3, 16))
    torch.testing.assert_close(out, attn.out_proj.bias.expand(2, 3, 16))


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="cross-attention needs `memory`"):
        MultiHeadAttention(16, 4, cross=True)(torch.randn(1, 2, 16))


def test_half_precision_attention_on_cpu_runs_in_fp32_and_returns_the_input_dtype() -> None:
    # bf16 inputs (as autocast gives them): the fused kernel runs on their fp32 upcast, even inside autocast,
    # and the result is that fp32 result rounded to bf16 once; gradients flow back to the bf16 inputs.
    from core.attention import _attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _attend(q, k, v, mask, False, 0.0)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
