"""One compression spec per network, so compressed checkpoints reload from the file alone.

`compression_spec(network)` records everything that changes a network's *shape* after it is
built from its config: shared layer stacks, pruned attention heads, factorised linears and
embeddings, and attached head gates (by attention type). `apply_compression_spec(fresh, spec)`
turns a freshly constructed dense network into that shape, so the compressed state dict then
loads key for key. The LightningModules store the spec under `checkpoint["compression"]` in
`on_save_checkpoint` and apply it in `on_load_checkpoint`, which Lightning calls before
`load_state_dict` both in `load_from_checkpoint` and when the trainer resumes (and before the
optimizer is built, so the optimizer sees the compressed parameters).

Order of application: sharing first (the other specs name modules inside the shared stack,
`...layers.layers.0...`), then heads and FFN neurons (pruning slices dense `nn.Linear` projections, and a
projection factorised after pruning needs the pruned sizes), then factorisation, then gates
(one log-alpha per *remaining* head).

`check_state_dict` turns the size mismatch torch would report for a compressed state dict
loaded into a dense network (or vice versa) into one ValueError naming the differing keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from compression.factorize import apply_factorization_spec, factorization_spec
from compression.ffn import apply_ffn_config, ffn_config
from compression.gates import GateConfig, attach_gates, attached_gates, detach_gates, l0_penalty
from compression.heads import attention_modules, check_types
from compression.prune import KEPT_ATTR, apply_head_config, head_config
from compression.quantize import load_quantization, save_quantization
from compression.sharing import apply_sharing_spec, sharing_spec

SPEC_KEY = "compression"
_HINT = ("a compressed (shared / head-pruned / factorised / gated) checkpoint must be opened with its "
         f"'{SPEC_KEY}' spec — use the module's load_from_checkpoint(path), or `init_from`, "
         "not load_state_dict on a dense model")


def compression_spec(network: nn.Module) -> dict:
    """JSON-able shape changes of `network`; {} for a dense network without gates.

    Keys (each only when non-empty): "sharing" (`sharing_spec`), "heads" (`head_config`, only
    if some attention went through head pruning), "ffn" (`compression.ffn.ffn_config`: kept
    intermediate neurons per FFN, only if some FFN was pruned), "factorization" (`factorization_spec`),
    "gates" (sorted attention types that have gates attached).
    """
    spec: dict = {}
    if sharing := sharing_spec(network):
        spec["sharing"] = sharing
    if any(hasattr(a, KEPT_ATTR) for attns in attention_modules(network).values() for a in attns):
        spec["heads"] = head_config(network)
    if (ffn := ffn_config(network)) is not None:
        spec["ffn"] = ffn
    fact = factorization_spec(network)
    if fact["linears"] or fact["embeddings"]:
        spec["factorization"] = fact
    if gates := attached_gates(network):
        spec["gates"] = sorted(gates)
    return spec


def _structure(spec: Mapping) -> dict:
    return {k: v for k, v in spec.items() if k != "gates"}


def apply_compression_spec(network: nn.Module, spec: Mapping) -> nn.Module:
    """Rebuild a freshly constructed dense `network` into the shape of `spec`, in place.

    Gates already attached (e.g. by a `gate_types` hyperparameter at construction) are
    replaced by the spec's gates, since the checkpoint's state dict decides. A network that
    already has exactly the spec's structure (resuming in the process that compressed it) is
    left as is; one compressed differently is a ValueError. Weights are placeholders until
    the checkpoint's state dict is loaded.
    """
    unknown = sorted(set(spec) - {"sharing", "heads", "ffn", "factorization", "gates"})
    if unknown:
        raise ValueError(f"unknown compression spec entries {unknown}")
    current = compression_spec(network)
    gates_now = current.get("gates")
    if _structure(current) != _structure(spec):
        if _structure(current):
            raise ValueError(f"{type(network).__name__} is already compressed as {_structure(current)}, "
                             f"which differs from the checkpoint's {_structure(spec)}")
        detach_gates(network)  # gates are re-attached below, sized to the remaining heads
        gates_now = None
        if "sharing" in spec:
            apply_sharing_spec(network, spec["sharing"])
        if "heads" in spec:
            apply_head_config(network, spec["heads"])
        if "ffn" in spec:
            apply_ffn_config(network, spec["ffn"])
        if "factorization" in spec:
            apply_factorization_spec(network, spec["factorization"])
    if gates_now != spec.get("gates"):
        detach_gates(network)
        if spec.get("gates"):
            attach_gates(network, list(spec["gates"]))
    return network


def _describe(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True,
                     source: str = "checkpoint") -> None:
    """Raise one clear ValueError if `state_dict` cannot load into `module`.

    Shape mismatches always count; missing and unexpected keys only when `strict`.
    """
    own = module.state_dict()
    shapes = [f"{k}: {tuple(state_dict[k].shape)} in the {source} vs {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = [f"shapes differ ({_describe(shapes)})"] if shapes else []
    if strict:
        if missing := [k for k in own if k not in state_dict]:
            problems.append(f"missing from the {source}: {_describe(missing)}")
        if unexpected := [k for k in state_dict if k not in own]:
            problems.append(f"not in the model: {_describe(unexpected)}")
    if problems:
        raise ValueError(f"the {source}'s weights do not fit {type(module).__name__}: "
                         + "; ".join(problems) + f". Note: {_HINT}")


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint file as a dict on CPU; a clear ValueError if it is not one."""
    if not Path(path).is_file():
        raise ValueError(f"init_from checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def init_weights_from(module: nn.Module, network: nn.Module, path: str | Path) -> dict:
    """Give `module` the weights (not the optimizer state) of the checkpoint at `path`.

    The checkpoint's compression spec is applied to `network` (the module's compressible
    network) first; a state dict that still does not fit is a ValueError naming the keys.
    Returns the checkpoint, for hooks that want more of it (e.g. a stored vocabulary).
    """
    ckpt = read_checkpoint(path)
    apply_compression_spec(network, ckpt.get(SPEC_KEY) or {})
    check_state_dict(module, ckpt["state_dict"], strict=True, source=f"init_from checkpoint {str(path)!r}")
    nn.Module.load_state_dict(module, ckpt["state_dict"], strict=True)
    return ckpt


class CompressionHooks:
    """Mixin for LightningModules whose network may be compressed (put it before LightningModule).

    The module names its compressible network in `compressible_network()` and calls
    `setup_compression` at the end of `__init__`, `save_compression` / `load_compression` from
    its checkpoint hooks, adds `l0_term()` (None without gates) to its training loss and
    `gate_groups()` to its optimiser. Its `load_state_dict` checks shapes first and fails with one
    clear ValueError.
    """

    gate_config: GateConfig | None = None

    def compressible_network(self) -> nn.Module:
        """The network whose shape compression changes (a Seq2SeqTransformer, a BertModel)."""
        raise NotImplementedError

    def init_compression(self, init_from: str | None) -> None:
        """Load `init_from` weights (its compression rebuilt first) into the module, if given."""
        if init_from:
            init_weights_from(self, self.compressible_network(), init_from)  # type: ignore[arg-type]

    def setup_compression(self, gates: GateConfig | Mapping | None, init_from: str | None = None) -> None:
        """Load `init_from` weights, then attach the gates `gates` asks for (types the `init_from`
        checkpoint already gated keep their trained log-alphas)."""
        if isinstance(gates, Mapping):
            gates = GateConfig(**gates)
        self.gate_config = gates
        if gates is not None:
            l0_weights(gates.l0_lambda)
        self.init_compression(init_from)
        if gates is not None:
            network = self.compressible_network()
            have = attached_gates(network)
            if new := [t for t in gates.types if t not in have]:
                attach_gates(network, new)

    def save_compression(self, checkpoint: dict) -> None:
        """Store the compression spec of the network (and the module's quantisation recipe) in `checkpoint`."""
        checkpoint[SPEC_KEY] = compression_spec(self.compressible_network())
        save_quantization(self, checkpoint)  # type: ignore[arg-type]

    def load_compression(self, checkpoint: dict) -> None:
        """Reshape the network to the checkpoint's spec (before Lightning loads its state dict)."""
        if SPEC_KEY in checkpoint:
            apply_compression_spec(self.compressible_network(), checkpoint[SPEC_KEY] or {})
        load_quantization(self, checkpoint)  # type: ignore[arg-type]  # last: it acts on the reshaped network

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, after `check_state_dict` (a clear error, not a size mismatch)."""
        check_state_dict(self, state_dict, strict=strict)  # type: ignore[arg-type]
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]

    def gate_groups(self) -> list[dict]:
        """[the gates' log-alphas at their constant `gates.lr`] when it is set, else [].

        The group has no weight decay and `fixed_lr` (schedule callbacks leave it alone).
        """
        gate_lr = self.gate_config.lr if self.gate_config is not None else None
        params = [g.log_alpha for layers in attached_gates(self.compressible_network()).values() for g in layers]
        if gate_lr is None or not params:
            return []
        return [{"params": params, "weight_decay": 0.0, "lr": gate_lr, "fixed_lr": gate_lr}]

    def l0_term(self) -> Tensor | None:
        """Weighted L0 penalty of the attached gates (None when every weight is 0).

        `gates.l0_lambda` is one weight for every gated type or {type: weight} (types left out get 0),
        so e.g. decoder self-attention can be pushed harder than cross-attention. With gates
        attached, logs `train/heads_open_<type>` (share of heads whose eval-time gate is > 0, i.e.
        that pruning by gates would keep) and, with a weight > 0, `train/l0`.
        """
        weights = l0_weights(self.gate_config.l0_lambda if self.gate_config is not None else 0.0)
        gates = attached_gates(self.compressible_network())
        for kind, layers in gates.items():
            la = torch.cat([g.log_alpha.detach().flatten() for g in layers])
            g0 = layers[0]
            is_open = torch.sigmoid(la) * (g0.high - g0.low) + g0.low > 0
            share = is_open.float().mean() if la.numel() else la.new_zeros(())
            self.log(f"train/heads_open_{kind}", share)  # type: ignore[attr-defined]
        if isinstance(weights, float):
            if weights == 0.0:
                return None
            if not gates:
                raise ValueError("gates.l0_lambda > 0 but no head gates are attached: set gates.types "
                                 "(e.g. ['encoder_self'])")
            weights = dict.fromkeys(gates, weights)
        weights = {kind: w for kind, w in weights.items() if w > 0}
        if not weights:
            return None
        if missing := sorted(set(weights) - set(gates)):
            raise ValueError(f"gates.l0_lambda > 0 for {missing} but those types have no head gates: add them "
                             f"to gates.types (gated now: {sorted(gates)})")
        self.log("train/l0", l0_penalty(gates).detach())  # type: ignore[attr-defined]
        return sum(w * l0_penalty({kind: gates[kind]}) for kind, w in weights.items())  # type: ignore[return-value]


def l0_weights(l0_lambda: float | Mapping[str, float]) -> float | dict[str, float]:
    """`l0_lambda` checked and as floats: one weight >= 0, or {attention type: weight >= 0}."""
    if not isinstance(l0_lambda, Mapping):
        if float(l0_lambda) < 0:
            raise ValueError(f"l0_lambda must be >= 0, got {l0_lambda}")
        return float(l0_lambda)
    check_types(list(l0_lambda))
    if bad := {kind: w for kind, w in l0_lambda.items() if float(w) < 0}:
        raise ValueError(f"l0_lambda must be >= 0 for every attention type, got {bad}")
    return {kind: float(w) for kind, w in l0_lambda.items()}
