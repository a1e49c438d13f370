"""Hard-concrete head gates (Louizos et al. 2018) with an L0 penalty, as in Voita et al. (2019).

Each attention head gets one learnable `log_alpha`. A gate value in [0, 1] is drawn from a
stretched, clamped binary-concrete distribution while training (so exact zeros and ones have
non-zero probability and the gate stays differentiable), and is the deterministic
clamp(sigmoid(log_alpha) * (high - low) + low, 0, 1) at eval. The expected number of open
gates, sum_h P(gate_h != 0), is the L0 penalty the LightningModule weights by lambda.

Gates are attached to existing `MultiHeadAttention` modules: the gate module is registered as
the attention's `head_gates` child (so its log-alphas are model parameters, reach the
optimizer and are saved in checkpoints) and a forward pre-hook writes the gate values into
the attention's `head_mask` before every call. No model class is forked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from typing_extensions import override

from compression.heads import attention_modules
from core.attention import MultiHeadAttention

GATES_ATTR = "head_gates"
_HOOK_ATTR = "_head_gates_hook"


@dataclass
class GateConfig:
    """Gate fine-tuning: hard-concrete gates on the heads of `types` (e.g. ['encoder_self'], ['bert_self']).

    `l0_lambda` weights the gates' L0 penalty in the training loss: one weight, or {type: weight}
    (types left out: 0) to push some types harder. `lr` is a constant rate of the log-alphas (own
    group, no weight decay, untouched by schedule callbacks; None: the base rate): at a fine-tuning
    peak rate like 1e-4 an Adam step moves a log-alpha by ~1e-4, so a few hundred steps never close a head.
    """

    types: list[str] = field(default_factory=list)
    l0_lambda: float | dict[str, float] = 0.0
    lr: float | None = None

    def __post_init__(self) -> None:
        if not self.types:
            raise ValueError("gates.types must name at least one attention type (or leave gates out)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"gates.lr must be > 0 (or null to train gates at the base rate), got {self.lr}")


class HardConcreteGates(nn.Module):
    """One hard-concrete gate per head: `forward()` returns the (num_heads,) gate values."""

    def __init__(
        self, num_heads: int, init_log_alpha: float = 3.0, temperature: float = 2.0 / 3.0,
        low: float = -0.1, high: float = 1.1, eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not low < 0.0 < 1.0 < high:
            raise ValueError(f"stretch interval must satisfy low < 0 < 1 < high, got ({low}, {high})")
        # A large initial log_alpha starts with every gate open (eval value 1), so gate
        # fine-tuning from a converged checkpoint starts at the converged model.
        self.log_alpha = nn.Parameter(torch.full((num_heads,), float(init_log_alpha)))
        self.temperature, self.low, self.high, self.eps = temperature, low, high, eps

    @property
    def num_heads(self) -> int:
        """Heads this gate set covers (one log-alpha each)."""
        return self.log_alpha.numel()

    def forward(self) -> Tensor:
        """Gate values (num_heads,): a fresh sample in training mode, deterministic in eval."""
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(self.eps, 1.0 - self.eps)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.temperature)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def p_open(self) -> Tensor:
        """P(gate_h != 0) per head (num_heads,), differentiable w.r.t. log_alpha."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-self.low / self.high))

    def l0_penalty(self) -> Tensor:
        """Expected number of open gates: sum_h P(gate_h != 0)."""
        return self.p_open().sum()

    @override
    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, temperature={self.temperature:.4g}, stretch=({self.low}, {self.high})"


def _set_head_mask(attn: MultiHeadAttention, args: tuple) -> None:
    attn.head_mask = getattr(attn, GATES_ATTR)()


def attach_gates(
    model: nn.Module, types: list[str] | tuple[str, ...] | None = None, init_log_alpha: float = 3.0,
) -> dict[str, list[HardConcreteGates]]:
    """Attach fresh gates to every attention of `types` (default: all); {type: [gates per layer]}.

    Call before building the optimizer so the log-alphas are trained. Attaching twice is an
    error (the old gates would keep training unseen).
    """
    mods = attention_modules(model, types)
    out: dict[str, list[HardConcreteGates]] = {}
    for kind, attns in mods.items():
        for attn in attns:
            if hasattr(attn, _HOOK_ATTR):
                raise ValueError(f"{kind} attention already has gates; call detach_gates first")
        out[kind] = []
        for attn in attns:
            w = attn.out_proj.weight
            gates = HardConcreteGates(attn.num_heads, init_log_alpha).to(device=w.device, dtype=w.dtype)
            gates.train(attn.training)  # a new module is in training mode; follow the model's mode
            attn.add_module(GATES_ATTR, gates)
            setattr(attn, _HOOK_ATTR, attn.register_forward_pre_hook(_set_head_mask))
            out[kind].append(gates)
    return out


def attached_gates(model: nn.Module) -> dict[str, list[HardConcreteGates]]:
    """The gates currently attached, {type: [gates per layer]} (types without gates omitted)."""
    out: dict[str, list[HardConcreteGates]] = {}
    for kind, attns in attention_modules(model).items():
        gates = [getattr(a, GATES_ATTR) for a in attns if hasattr(a, _HOOK_ATTR)]
        if gates:
            out[kind] = gates
    return out


def detach_gates(model: nn.Module) -> dict[str, list[HardConcreteGates]]:
    """Remove all gates and their hooks, reset head_mask to None; returns the removed gates."""
    removed = attached_gates(model)
    for attns in attention_modules(model).values():
        for attn in attns:
            if hasattr(attn, _HOOK_ATTR):
                getattr(attn, _HOOK_ATTR).remove()
                delattr(attn, _HOOK_ATTR)
                delattr(attn, GATES_ATTR)
                attn.head_mask = None
    return removed


def p_open_table(model: nn.Module) -> dict[str, Tensor]:
    """P(gate != 0) of every attached gate as {type: (layers, heads)} on CPU, NaN where a layer
    has fewer heads than the widest (after pruning); the data of the gate heatmap."""
    out: dict[str, Tensor] = {}
    for kind, gates in attached_gates(model).items():
        width = max(g.num_heads for g in gates)
        table = torch.full((len(gates), width), float("nan"))
        for i, g in enumerate(gates):
            table[i, : g.num_heads] = g.p_open().detach().float().cpu()
        out[kind] = table
    return out


def l0_penalty(gates: dict[str, list[HardConcreteGates]]) -> Tensor:
    """Sum of the L0 penalties of all gates in an `attach_gates` / `attached_gates` dict."""
    terms = [g.l0_penalty() for layers in gates.values() for g in layers]
    if not terms:
        raise ValueError("no gates given: attach gates to at least one attention type")
    return torch.stack(terms).sum()
