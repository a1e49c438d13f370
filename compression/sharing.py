"""Cross-layer weight sharing (ALBERT): k distinct layers applied N times in a cycle.

`SharedLayerStack` behaves like the `nn.ModuleList` it replaces: iterating it yields the N
applications (layer i % k for i = 0..N-1), `len()` is N and indexing wraps, so models that
loop `for layer in self.layers: x = layer(x, mask)` (BertModel, Seq2SeqTransformer's encoder
and decoder, whose caches are one per application) run it unchanged. Only k layers own
parameters, so the state dict holds `layers.0 .. layers.{k-1}`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

from torch import nn
from typing_extensions import override


class SharedLayerStack(nn.Module):
    """`layers` (k distinct modules) applied `n` times in the cycle 0, 1, ..., k-1, 0, 1, ..."""

    def __init__(self, layers: Sequence[nn.Module], n: int) -> None:
        super().__init__()
        k = len(layers)
        if k < 1:
            raise ValueError("a shared stack needs at least one distinct layer")
        if n < k:
            raise ValueError(f"n={n} applications cannot use k={k} distinct layers (need n >= k)")
        self.layers = nn.ModuleList(layers)
        self.k, self.n = k, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[nn.Module]:
        return (self.layers[i % self.k] for i in range(self.n))

    def __getitem__(self, i: int) -> nn.Module:
        if not -self.n <= i < self.n:
            raise IndexError(f"application {i} out of range for {self.n} applications")
        return self.layers[(i % self.n) % self.k]

    def forward(self, x, *args, **kwargs):
        """Apply the N layers in turn; extra arguments (e.g. the attention mask) go to every layer."""
        for layer in self:
            x = layer(x, *args, **kwargs)
        return x

    def num_parameters(self) -> int:
        """Exact parameter count: the k distinct layers' parameters, each counted once."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @override
    def extra_repr(self) -> str:
        return f"k={self.k}, n={self.n}"


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that has `reset_parameters` (Linear, LayerNorm, Embedding)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def share_layers(
    layers: nn.ModuleList, k: int, n: int, init_from: int | Sequence[int] | None = None,
    init_fn: Callable[[nn.Module], None] | None = None,
) -> SharedLayerStack:
    """A SharedLayerStack of k layers applied n times, built from a (teacher) layer stack.

    `init_from` picks the source of the k distinct layers: an int copies that teacher layer
    into all k; a sequence of k ints copies one teacher layer each; None starts from scratch
    (copies of layer 0's architecture, re-initialised by `init_fn`, default each submodule's
    `reset_parameters`; pass e.g. `BertModel._init_weights` via `module.apply`). The teacher
    stack is not modified: layers are deep copies.
    """
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be >= 1, got k={k}, n={n}")
    if len(layers) == 0:
        raise ValueError("share_layers needs a non-empty layer stack to copy the architecture from")
    if init_from is None:
        sources = [0] * k
    elif isinstance(init_from, int):
        sources = [init_from] * k
    else:
        sources = list(init_from)
        if len(sources) != k:
            raise ValueError(f"init_from lists {len(sources)} teacher layers but k={k}")
    for j in sources:
        if not -len(layers) <= j < len(layers):
            raise ValueError(f"init_from layer {j} does not exist: the stack has {len(layers)} layers")
    copies = [copy.deepcopy(layers[j]) for j in sources]
    if init_from is None:
        for layer in copies:
            (init_fn or reset_parameters)(layer)
    return SharedLayerStack(copies, n)


def sharing_spec(model: nn.Module) -> dict[str, dict[str, int]]:
    """{module name: {"k", "n"}} for every SharedLayerStack, to rebuild the architecture."""
    return {name: {"k": m.k, "n": m.n} for name, m in model.named_modules() if isinstance(m, SharedLayerStack)}


def apply_sharing_spec(model: nn.Module, spec: dict[str, dict[str, int]]) -> None:
    """Replace the dense layer stacks named in `spec` by SharedLayerStacks of the same shape
    (layers copied from the stack's first layer; weights come from the state dict loaded next)."""
    for name, shape in spec.items():
        try:
            layers = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"shared stack {name!r} of the checkpoint does not exist in "
                             f"{type(model).__name__}") from None
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"{name!r} is a {type(layers).__name__}, expected a dense nn.ModuleList of layers")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, share_layers(layers, shape["k"], shape["n"], init_from=0))
