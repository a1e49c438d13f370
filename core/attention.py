"""Multi-head attention on `F.scaled_dot_product_attention`.

One module serves encoder self-attention, causal decoder self-attention (with an
incremental key/value cache) and encoder-decoder cross-attention. Its heads are
first-class: `num_heads` may differ from layer to layer after pruning, and an optional
per-head multiplier (`head_mask`) scales each head's output before the output projection,
which is what gates (L0), Taylor scoring (gradient of the mask) and "prune = mask"
equivalence tests hook into.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = dict[str, Tensor]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with fused projections and prunable heads.

    Self-attention uses one fused `qkv_proj` (3 x heads x head_dim rows); cross-attention
    uses `q_proj` for the queries and a fused `kv_proj` for the memory. Rows are laid out
    head-major inside each of q/k/v so a head is a contiguous slice.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        cross: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
            head_dim = d_model // num_heads
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.cross, self.dropout = cross, dropout
        inner = num_heads * head_dim
        if cross:
            self.q_proj = nn.Linear(d_model, inner, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        # Per-head multiplier (num_heads,) or (batch, num_heads); None means all ones.
        self.head_mask: Tensor | None = None

    def split_heads(self, x: Tensor, parts: int) -> list[Tensor]:
        """(B, T, parts*H*Dh) -> `parts` tensors of shape (B, H, T, Dh)."""
        b, t, _ = x.shape
        x = x.view(b, t, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return list(x.unbind(0))

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Attend from `x` (B, T, d) to itself, or to `memory` (B, S, d) when cross.

        `mask` is a boolean tensor broadcastable to (B, H, T, S), True = may attend.
        `cache`, when given, is a dict this call reads and extends: for self-attention the
        keys/values of all previous steps (incremental decoding), for cross-attention the
        projected memory, computed once.
        """
        b, t, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias remains
            return self.out_proj(x.new_zeros(b, t, 0))
        if self.cross:
            (q,) = self.split_heads(self.q_proj(x), 1)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                if memory is None:
                    raise ValueError("cross-attention needs `memory` (or its keys/values in `cache`)")
                k, v = self.split_heads(self.kv_proj(memory), 2)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = self.split_heads(self.qkv_proj(x), 3)
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
                # With a cache the new queries are the latest positions: they may see every
                # cached key, so causality needs no mask when t == 1.
                if is_causal and t > 1:
                    mask = _causal_tail_mask(t, k.shape[2], x.device)
                is_causal = False
        out = _attend(q, k, v, mask, is_causal and mask is None, self.dropout if self.training else 0.0)
        if self.head_mask is not None:
            scale = self.head_mask.to(out.dtype)
            out = out * (scale.view(1, -1, 1, 1) if scale.dim() == 1 else scale[:, :, None, None])
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out_proj(out)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
    """`F.scaled_dot_product_attention` (B, H, T, Dh), in fp32 for bf16 / fp16 inputs on CPU: there PyTorch's
    fused kernel is slower in half precision than in fp32 (its backward about 7x on this AVX-512 CPU), while the
    projections around it are the GEMMs half precision speeds up. The result comes back in the input's dtype."""
    low = q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu"
    if not low:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                             dropout_p=dropout_p)
    return out.to(q.dtype)


def _causal_tail_mask(t: int, s: int, device: torch.device) -> Tensor:
    """Causal mask for the last `t` queries over `s` keys (queries are positions s-t..s-1)."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def key_mask(keep: Tensor) -> Tensor:
    """Boolean attention mask (B, 1, 1, S) from a (B, S) keep-mask (True/1 = real token)."""
    return keep.bool()[:, None, None, :]
