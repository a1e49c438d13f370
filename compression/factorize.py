"""Low-rank surgery: truncated-SVD factorised linear layers and embeddings.

A dense weight W (out x in) is replaced by U (out x r) @ V (r x in) from its truncated SVD,
which is the best rank-r approximation in Frobenius norm (Eckart-Young): the squared error is
the sum of the discarded squared singular values. The rank is an int, or a float in (0, 1]
meaning "the smallest rank keeping at least this fraction of the spectral energy sum(s^2)".
A rank >= min(out, in) saves nothing: it is refused with a ValueError (keep the layer dense).
Activation-aware factorisation instead minimises the error of the layer's outputs on sample
inputs, which keeps what the data uses rather than what the weight matrix is largest in.

Embeddings get the ALBERT form: a vocab x H table then an H x d projection; the module's
`.weight` is the effective vocab x d matrix, so tied output projections
(`hidden @ embed.tokens.weight.t()` in nmt/model.py) keep working unchanged.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

Rank = int | float


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def select_rank(singular_values: Tensor, rank: Rank) -> int:
    """The rank to keep: `rank` itself if an int, else the smallest r whose leading singular
    values hold at least the fraction `rank` of the energy sum(s^2)."""
    if isinstance(rank, bool) or not isinstance(rank, int | float):
        raise TypeError(f"rank must be an int or a float energy fraction, got {rank!r}")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        return rank
    if not 0.0 < rank <= 1.0:
        raise ValueError(f"energy fraction must be in (0, 1], got {rank}")
    energy = singular_values.double().square()
    kept = energy.cumsum(0) / energy.sum()
    # Tolerance so that e.g. a fraction of exactly 1.0 is not lost to round-off.
    return int((kept < rank - 1e-12).sum()) + 1


class RankTooHighError(ValueError):
    """The requested rank would not make the matrix smaller: keep the layer dense."""


def _check_rank(r: int, rows: int, cols: int, what: str, allow_full_rank: bool) -> None:
    limit = min(rows, cols)
    if r > limit or (r == limit and not allow_full_rank):
        raise RankTooHighError(
            f"rank {r} >= min{(rows, cols)} = {limit} for {what}: a factorisation would not be "
            f"smaller than the dense matrix; keep this layer dense"
        )


def truncated_svd(weight: Tensor, rank: Rank, what: str = "the matrix",
                  allow_full_rank: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(U_r, s_r, Vh_r) of `weight`, computed in float64 (W ~= U_r diag(s_r) Vh_r).

    Raises ValueError if the selected rank is >= min(weight.shape) (unless `allow_full_rank`
    and it equals min(weight.shape)).
    """
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    r = select_rank(s, rank)
    _check_rank(r, *weight.shape, what, allow_full_rank)
    return u[:, :r], s[:r], vh[:r]


def activation_aware_svd(weight: Tensor, second_moment: Tensor, rank: Rank, what: str = "the matrix",
                         damping: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """(U_r, s_r, Vh_r) whose product W' minimises ||(W - W') X||_F over rank-r matrices, for layer
    inputs X (in x N) with X X^T = `second_moment` (SVD-LLM's whitening, Wang et al. 2024).

    With X X^T = L L^T (Cholesky), ||(W - W') X||_F = ||(W - W') L||_F, so the truncated SVD of W L
    is optimal (Eckart-Young) and W' = U_r diag(s_r) (Vh_r L^-1); the squared output error is the
    sum of the discarded squared singular values of W L. A float `rank` is an energy fraction of
    that (output) spectrum. `damping` (relative to the mean diagonal) keeps L invertible when some
    input direction never varies.
    """
    moment = second_moment.detach().double().to(weight.device)
    if moment.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"second moment of {what} must be {weight.shape[1]}x{weight.shape[1]}, "
                         f"got {tuple(moment.shape)}")
    moment = moment + damping * moment.diagonal().mean() * torch.eye(len(moment), dtype=moment.dtype,
                                                                     device=moment.device)
    lower = torch.linalg.cholesky(moment)
    u, s, vh = truncated_svd(weight.detach().double() @ lower, rank, what)
    return u, s, torch.linalg.solve_triangular(lower, vh, upper=False, left=False)


def input_second_moments(model: nn.Module, pattern: str, batches: Iterable,
                         forward: Callable[[object], object]) -> dict[str, Tensor]:
    """X X^T (float64, in x in) of the inputs of every `nn.Linear` whose name matches `pattern`,
    summed over all input rows while `forward(batch)` runs (no grad) on each of `batches`: the
    statistics `factorize_linears(..., input_moments=...)` needs."""
    regex = re.compile(pattern)
    moments: dict[str, Tensor] = {}

    def recorder(name: str) -> Callable:
        def record(module: nn.Linear, args: tuple) -> None:
            x = args[0].detach().reshape(-1, module.in_features).double()
            moments[name] = moments[name] + x.T @ x if name in moments else x.T @ x
        return record

    hooks = [m.register_forward_pre_hook(recorder(name)) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and regex.search(name)]
    if not hooks:
        raise ValueError(f"pattern '{pattern}' matches no nn.Linear of the model")
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return moments


class FactorizedLinear(nn.Module):
    """y = x V^T U^T + b: a drop-in for `nn.Linear(in_features, out_features)` of rank `rank`.

    Built from a trained layer with `from_linear`; U carries sqrt(s) and V carries sqrt(s), so
    both factors have balanced scales for fine-tuning.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.V = nn.Parameter(torch.empty(rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.U, std=rank**-0.5)
        nn.init.normal_(self.V, std=in_features**-0.5)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: Rank, allow_full_rank: bool = False,
                    what: str = "this linear layer") -> FactorizedLinear:
        """Truncated SVD of `linear.weight`; `allow_full_rank` permits r = min(dims) (exactness tests)."""
        return cls._from_svd(linear, *truncated_svd(linear.weight, rank, what, allow_full_rank))

    @classmethod
    def _from_svd(cls, linear: nn.Linear, u: Tensor, s: Tensor, vh: Tensor) -> FactorizedLinear:
        root = s.sqrt()
        out = cls(linear.in_features, linear.out_features, len(s), bias=linear.bias is not None)
        out.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            out.U.copy_(u * root)
            out.V.copy_(root[:, None] * vh)
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        out.train(linear.training)
        return out

    @property
    def weight(self) -> Tensor:
        """The effective (out x in) weight U @ V."""
        return self.U @ self.V

    @override
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    @override
    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    def as_linear_pair(self) -> LinearPair:
        """The same function as two plain linears (V, then U with the bias), for int8 dynamic quantisation."""
        pair = LinearPair(self.in_features, self.out_features, self.rank, self.bias is not None)
        pair.to(device=self.U.device, dtype=self.U.dtype)
        with torch.no_grad():
            pair[0].weight.copy_(self.V)
            pair[1].weight.copy_(self.U)
            if self.bias is not None:
                pair[1].bias.copy_(self.bias)
        return pair


class LinearPair(nn.Sequential):
    """A factorised linear as `nn.Sequential(Linear(in, rank), Linear(rank, out))`: the form dynamic
    quantisation understands. `factorization_spec` records it like a FactorizedLinear."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias))
        self.rank = rank


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def factorize_linears(model: nn.Module, pattern: str, rank: Rank, skip_full_rank: bool = False,
                      input_moments: dict[str, Tensor] | None = None) -> dict:
    """Swap every `nn.Linear` whose module name matches `pattern` (re.search) for a FactorizedLinear.

    Plain truncated SVD of each weight, or with `input_moments` ({name: X X^T} from
    `input_second_moments`) the activation-aware SVD that best preserves each layer's outputs on
    those inputs (`activation_aware_svd`).

    All ranks are checked before anything is swapped, so on error the model is unchanged.
    With `skip_full_rank`, layers whose rank would be >= min(dims) stay dense (listed under
    "dense") instead of raising. A rank below min(dims) but above out*in/(out+in) still grows
    the layer: that is allowed but warned about. Returns {"params_before", "params_after", "layers": {name:
    {"rank", "shape", "params_before", "params_after"}}, "dense": [names]}.
    """
    regex = re.compile(pattern)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {name: m for name, m in linears.items() if regex.search(name)}
    if not chosen:
        some = ", ".join(list(linears)[:6]) or "none"
        raise ValueError(f"pattern '{pattern}' matches no nn.Linear of the model; "
                         f"available names include: {some}")
    before = count_parameters(model)
    plans: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    dense: list[str] = []
    missing = sorted(set(chosen) - set(input_moments)) if input_moments is not None else []
    if missing:
        raise ValueError(f"input_moments has no statistics for {len(missing)} matched layer(s), "
                         f"e.g. {missing[0]!r}; collect them with input_second_moments on the same pattern")
    for name, linear in chosen.items():
        try:
            plans[name] = (truncated_svd(linear.weight, rank, f"layer {name!r}") if input_moments is None
                           else activation_aware_svd(linear.weight, input_moments[name], rank, f"layer {name!r}"))
        except RankTooHighError:
            if not skip_full_rank:
                raise
            dense.append(name)
    layers = {}
    for name, svd in plans.items():
        linear = chosen[name]
        new = FactorizedLinear._from_svd(linear, *svd)
        _set_submodule(model, name, new)
        layers[name] = {"rank": new.rank, "shape": [linear.out_features, linear.in_features],
                        "params_before": sum(p.numel() for p in linear.parameters()),
                        "params_after": sum(p.numel() for p in new.parameters())}
    grown = [name for name, v in layers.items() if v["params_after"] > v["params_before"]]
    if grown:
        warnings.warn(f"factorising made {len(grown)} layer(s) larger than dense (rank above "
                      f"out*in/(out+in)): {', '.join(grown[:6])}", stacklevel=2)
    return {"params_before": before, "params_after": count_parameters(model), "layers": layers, "dense": dense}


class FactorizedEmbedding(nn.Module):
    """Embedding of rank H: a (num_embeddings x H) table then an (H x embedding_dim) projection.

    `weight` is the effective (num_embeddings x embedding_dim) matrix, so code that reads
    `embedding.weight` (tied output projections, vocabulary checks via `num_embeddings`) works.
    The padding row of the table receives no gradient, as in `nn.Embedding`.
    """

    def __init__(self, num_embeddings: int, rank: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.proj = nn.Parameter(torch.empty(rank, embedding_dim))
        nn.init.normal_(self.proj, std=rank**-0.5)

    @property
    def padding_idx(self) -> int | None:
        """The padding row of the factorised table (None without one), as `nn.Embedding` has it."""
        return self.table.padding_idx

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: Rank, allow_full_rank: bool = False,
                       what: str = "this embedding", row_weights: Tensor | None = None) -> FactorizedEmbedding:
        """Truncated SVD of a trained table: table = U_r diag(s_r), proj = Vh_r (orthonormal rows).

        `row_weights` (one per token, > 0; e.g. sqrt(1 + count) of the token in the training data)
        make it the best rank-r approximation in the weighted norm sum_i w_i^2 |W_i - A_i|^2: the
        subspace Vh_r comes from the SVD of diag(w) W and every row is W_i projected onto it, so
        the rank is spent on the tokens the task actually reads. The padding index is kept; the
        padding row is copied as is (exactly 0 if it was 0).
        """
        weight = embedding.weight.detach().double()
        if row_weights is not None:
            row_weights = row_weights.detach().double().to(weight.device)
            if row_weights.shape != (embedding.num_embeddings,) or not bool((row_weights > 0).all()):
                raise ValueError(f"row_weights for {what} must be {embedding.num_embeddings} positive numbers, "
                                 f"got shape {tuple(row_weights.shape)}")
            _, s, vh = truncated_svd(weight * row_weights[:, None], rank, what, allow_full_rank)
        else:
            _, s, vh = truncated_svd(weight, rank, what, allow_full_rank)
        out = cls(embedding.num_embeddings, len(s), embedding.embedding_dim, embedding.padding_idx)
        out.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        with torch.no_grad():
            out.table.weight.copy_(weight @ vh.T)  # = U_r diag(s_r) without weights
            out.proj.copy_(vh)
            if embedding.padding_idx is not None and not embedding.weight[embedding.padding_idx].any():
                out.table.weight[embedding.padding_idx].zero_()
        out.train(embedding.training)
        return out

    @property
    def weight(self) -> Tensor:
        """The effective (num_embeddings x embedding_dim) matrix table @ proj."""
        return self.table.weight @ self.proj

    @override
    def forward(self, ids: Tensor) -> Tensor:
        return self.table(ids) @ self.proj

    @override
    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, rank={self.rank}, {self.embedding_dim}, "
                f"padding_idx={self.padding_idx}")


def _embedding_path(model: nn.Module) -> str:
    """Module name of the token embedding: `embed.tokens` (Seq2SeqTransformer) or
    `embeddings.word_embeddings` (BertModel), also under a `bert.` attribute (TaggerModule)."""
    for path in ("embed.tokens", "embeddings.word_embeddings", "bert.embeddings.word_embeddings"):
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, FactorizedEmbedding):
            raise ValueError(f"{path} is already factorised (rank {module.rank})")
        if isinstance(module, nn.Embedding):
            return path
    raise ValueError(f"{type(model).__name__} has no token embedding at embed.tokens (Seq2SeqTransformer) "
                     "or embeddings.word_embeddings (BertModel)")


def token_counts(token_ids: list[list[int]], vocab_size: int) -> Tensor:
    """How often every token id (0..vocab_size-1) occurs in `token_ids` (float64)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in token_ids:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size).double()
    return counts


def token_frequency_weights(token_ids: list[list[int]], vocab_size: int, prior: float = 1.0) -> Tensor:
    """sqrt(prior + count) of every token id in `token_ids`: row weights for a frequency-weighted SVD
    (the weighted error is then sum over occurrences; `prior` > 0 keeps unseen tokens in the fit)."""
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (unseen tokens need a positive weight), got {prior}")
    return (prior + token_counts(token_ids, vocab_size)).sqrt()


def factorize_embedding(model: nn.Module, rank: Rank, allow_full_rank: bool = False,
                        row_weights: Tensor | None = None) -> dict:
    """Replace the model's token embedding by a FactorizedEmbedding of `rank` (in place).

    Works for Seq2SeqTransformer (`embed.tokens`, whose weight is also the tied output
    projection) and BertModel (`embeddings.word_embeddings`) or a module holding it as `bert`.
    `row_weights` (see `FactorizedEmbedding.from_embedding`, `token_frequency_weights`) weight
    the approximation by token. Returns {"name", "rank", "params_before", "params_after"}
    (whole-model parameter counts).
    """
    path = _embedding_path(model)
    before = count_parameters(model)
    new = FactorizedEmbedding.from_embedding(model.get_submodule(path), rank, allow_full_rank, f"embedding {path!r}",
                                             row_weights)
    _set_submodule(model, path, new)
    return {"name": path, "rank": new.rank, "params_before": before, "params_after": count_parameters(model)}


def factorization_spec(model: nn.Module) -> dict:
    """What was factorised, JSON-able, for rebuilding the architecture from a checkpoint:
    {"linears": {name: rank}, "embeddings": {name: rank}}."""
    spec: dict[str, dict[str, int]] = {"linears": {}, "embeddings": {}}
    for name, m in model.named_modules():
        if isinstance(m, (FactorizedLinear, LinearPair)):
            spec["linears"][name] = m.rank
        elif isinstance(m, FactorizedEmbedding):
            spec["embeddings"][name] = m.rank
    return spec


def apply_factorization_spec(model: nn.Module, spec: dict) -> None:
    """Give a freshly built dense model the factorised shapes of `spec` (from `factorization_spec`)
    so the compressed state dict loads into it; weights are placeholders until loaded."""
    for kind, dense_type in (("linears", nn.Linear), ("embeddings", nn.Embedding)):
        for name, rank in spec.get(kind, {}).items():
            try:
                dense = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"factorised {kind[:-1]} {name!r} of the checkpoint does not exist in "
                                 f"{type(model).__name__}") from None
            if not isinstance(dense, dense_type):
                raise ValueError(f"{name!r} is a {type(dense).__name__}, expected a dense {dense_type.__name__}")
            if kind == "linears":
                new: nn.Module = FactorizedLinear(dense.in_features, dense.out_features, rank, dense.bias is not None)
            else:
                new = FactorizedEmbedding(dense.num_embeddings, rank, dense.embedding_dim, dense.padding_idx)
            new.to(device=dense.weight.device, dtype=dense.weight.dtype)
            _set_submodule(model, name, new)
