"""Prune attention heads of a trained checkpoint: score, choose, cut, save, report.

The pipeline behind `prune_heads.py`, the same for every task (`core.tasks`): a checkpoint of any
registered task (the task it records, or `task` for older files) is loaded, its heads are ranked by
`method` (`taylor`: Michel et al. |dL/d mask_h| of the task's loss over scoring data; `random`: the baseline;
`gates`: the trained hard-concrete gates), the least important ones are cut out physically
(`compression.prune`), and the pruned module is saved with its own checkpoint hooks, so
`core.tasks.load_task_module(path)` rebuilds it from the file alone.

Gates: heads whose eval-time gate is <= `gate_threshold` (or the lowest-ranked ones for a
count target) are removed, the kept heads' eval-time gate values are folded into the output
projection's input columns and the gates are detached, so the pruned model has no gates and
computes exactly what the gated model computed at eval on the kept heads.

The report (`REPORT_KEYS`) has heads kept per layer and type, size (`compression.measure`:
params, FLOPs per token, median CPU latency per batch size) and quality (BLEU/chrF or F1)
(the task's `quality` on `eval_data`) before and after.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning import LightningModule
from torch import Tensor, nn

from compression.gates import attached_gates, detach_gates
from compression.heads import attention_modules, check_types
from compression.importance import random_importance, taylor_importance
from compression.measure import size_report
from compression.prune import HeadPlan, head_config, heads_to_keep, prune_model
from core.tasks import EvalOptions, Task, load_task_module
from core.training import save_module_checkpoint

METHODS = ("gates", "taylor", "random")
REPORT_KEYS = ("task", "checkpoint", "output", "method", "target", "heads", "size", "quality")
Target = int | float | dict[str, int | float]


@dataclass
class PruneOptions:
    """Everything `prune_checkpoint` needs; see `prune_heads.py --help` for the meaning."""

    checkpoint: str
    output: str
    method: str
    prune: str | None = None
    gate_threshold: float | None = None
    task: str | None = None
    score_data: list[str] = field(default_factory=list)
    score_sentences: int = 500
    score_batch_size: int = 32
    eval_data: list[str] = field(default_factory=list)
    beam_size: int = 5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64])
    seq_len: int = 24
    latency_repeats: int = 10
    seed: int = 0
    report: str | None = None


# ----------------------------------------------------------------------------- targets
def _number(text: str, what: str) -> int | float:
    try:
        return int(text) if text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number of heads (int) or a fraction (float)") from None


def parse_target(text: str) -> Target:
    """'3' (heads), '0.5' (fraction) globally, or 'encoder_self=0.75,decoder_cross=2' per type."""
    if "=" not in text:
        return _number(text, "--prune")
    out: dict[str, int | float] = {}
    for part in text.split(","):
        kind, sep, amount = part.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"--prune: expected TYPE=AMOUNT, got {part!r}")
        out[kind.strip()] = _number(amount, kind.strip())
    check_types(list(out))
    return out


def _check_target(network: nn.Module, target: Target) -> None:
    """Unknown types, types the model lacks, and amounts beyond the head count: one clear error."""
    heads = {k: sum(a.num_heads for a in attns) for k, attns in attention_modules(network).items()}
    items = target.items() if isinstance(target, dict) else [("all types", target)]
    if isinstance(target, dict):
        check_types(list(target))
        missing = [k for k in target if k not in heads]
        if missing:
            raise ValueError(f"model has no attention of type(s) {missing}; it has {list(heads)}")
    for kind, amount in items:
        total = sum(heads.values()) if kind == "all types" else heads[kind]
        if isinstance(amount, int) and amount > total:
            raise ValueError(f"--prune {kind}: cannot prune {amount} heads, the model has only {total}")
        if isinstance(amount, int | float) and amount < 0 or isinstance(amount, float) and amount > 1:
            raise ValueError(f"--prune {kind}: {amount} is not a head count in [0, {total}] or a fraction in [0, 1]")


# ----------------------------------------------------------------------------- planning
def gate_plan(network: nn.Module, threshold: float) -> HeadPlan:
    """{type: [heads whose eval-time gate > threshold, per layer]} for every gated type."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"--gate_threshold must be in [0, 1), got {threshold}")
    plan: HeadPlan = {}
    for kind, layers in attached_gates(network).items():
        plan[kind] = []
        for gates in layers:
            values = gates.eval()()  # deterministic eval-time gate values
            plan[kind].append([h for h, v in enumerate(values.tolist()) if v > threshold])
    return plan


def gate_scores(network: nn.Module) -> dict[str, Tensor]:
    """Gate log-alphas as importance scores {type: (layers, heads)}, NaN where a layer is narrower."""
    out: dict[str, Tensor] = {}
    for kind, layers in attached_gates(network).items():
        width = max(g.num_heads for g in layers)
        out[kind] = torch.full((len(layers), width), float("nan"))
        for i, g in enumerate(layers):
            out[kind][i, : g.num_heads] = g.log_alpha.detach().float()
    return out


@torch.no_grad()
def fold_and_detach_gates(network: nn.Module) -> None:
    """Multiply each head's out_proj input columns by its eval-time gate, then remove the gates."""
    for kind, layers in attached_gates(network).items():
        for attn, gates in zip(attention_modules(network, [kind])[kind], layers, strict=True):
            values = gates.eval()().to(attn.out_proj.weight.dtype)
            scale = values.repeat_interleave(attn.head_dim)
            attn.out_proj.weight.mul_(scale.to(attn.out_proj.weight.device)[None, :])
    detach_gates(network)


def _counts(network: nn.Module) -> dict[str, list[int]]:
    return {k: [a.num_heads for a in attns] for k, attns in attention_modules(network).items()}


# ----------------------------------------------------------------------------- measuring
def measure_size(task: Task, module: LightningModule, opts: PruneOptions) -> dict:
    """`size_report` of the task's timed network on its example inputs at `opts.batch_sizes`."""
    def make(batch: int) -> tuple:
        return task.example_inputs(module, batch, opts.seq_len, opts.seed)

    with torch.no_grad():
        return size_report(task.timed_network(module), make, opts.batch_sizes, repeats=opts.latency_repeats,
                           warmup=1, count_tokens=task.count_tokens)


def measure_quality(task: Task, module: LightningModule, opts: PruneOptions) -> dict | None:
    """The task's quality on `opts.eval_data` (BLEU/chrF, entity F1, Spearman); None without eval data."""
    if not opts.eval_data:
        return None
    module.eval()
    return task.quality(module, [Path(f) for f in opts.eval_data], EvalOptions(beam_size=opts.beam_size))


# ----------------------------------------------------------------------------- saving
def save_checkpoint(module: LightningModule, path: str | Path) -> dict:
    """Write the model part of a Lightning checkpoint through the module's own save hook.

    Gates are gone after pruning, so a module that gates by hyper-parameter (`gates`) saves it reset
    (a reload would otherwise re-attach gates / demand an L0 term).
    """
    return save_module_checkpoint(module, path, **({"gates": None} if "gates" in module.hparams else {}))


def _jsonable(scores: dict[str, Tensor]) -> dict[str, list[list[float | None]]]:
    return {k: [[None if math.isnan(v) else round(v, 6) for v in row] for row in s.tolist()]
            for k, s in scores.items()}


# ----------------------------------------------------------------------------- pipeline
def plan_pruning(task: Task, module: LightningModule, opts: PruneOptions) -> tuple[HeadPlan, dict | None]:
    """(plan {type: [kept current head indices per layer]}, importance scores or None)."""
    if opts.method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {opts.method!r}")
    network = task.network(module)
    if (opts.prune is None) == (opts.gate_threshold is None):
        raise ValueError("give exactly one target: --prune N|FRACTION|TYPE=AMOUNT,... or --gate_threshold T")
    if opts.gate_threshold is not None and opts.method != "gates":
        raise ValueError("--gate_threshold only applies to --method gates")
    if opts.method == "gates" and not attached_gates(network):
        raise ValueError(f"--method gates: checkpoint {opts.checkpoint!r} has no head gates "
                         "(fine-tune it with gates: {types, l0_lambda} first, e.g. configs/nmt/gates_l0.yaml)")
    if opts.gate_threshold is not None:
        return gate_plan(network, opts.gate_threshold), gate_scores(network)
    target = parse_target(opts.prune)
    _check_target(network, target)
    types = list(target) if isinstance(target, dict) else None
    if opts.method == "gates":
        scores = gate_scores(network)
        if types and (ungated := [t for t in types if t not in scores]):
            raise ValueError(f"--method gates: no gates on {ungated}; gated types are {list(scores)}")
    elif opts.method == "random":
        scores = random_importance(network, types, seed=opts.seed)
    else:
        batches = task.scoring_batches(module, [Path(f) for f in opts.score_data], opts.score_sentences,
                                       opts.score_batch_size)
        loss = task.loss
        scores = taylor_importance(module, batches, loss, types)
    plan = heads_to_keep(scores, target)
    return plan, scores


def prune_checkpoint(opts: PruneOptions) -> dict:
    """Run the whole pipeline; writes `opts.output` and the report (.json, .md); returns the report."""
    task, module = load_task_module(opts.checkpoint, opts.task)
    network = task.network(module)
    if opts.method != "gates":
        # A gated checkpoint pruned by another method: its eval-time gates become plain weights
        # first (same outputs), so scoring masks are not overwritten by the gates' hooks.
        fold_and_detach_gates(network)
    plan, scores = plan_pruning(task, module, opts)
    heads_before = _counts(network)
    size_before = measure_size(task, module, opts)
    quality_before = measure_quality(task, module, opts)
    fold_and_detach_gates(network)  # gates method: decided, so fold the gates in and remove them
    prune_model(network, plan)
    module.eval()
    save_checkpoint(module, opts.output)
    report = {
        "task": task.name, "checkpoint": str(opts.checkpoint), "output": str(opts.output), "method": opts.method,
        "target": {"prune": opts.prune, "gate_threshold": opts.gate_threshold},
        "heads": {"before": heads_before, "after": _counts(network), "kept": head_config(network),
                  "scores": _jsonable(scores) if scores else None},
        "size": {"before": size_before, "after": measure_size(task, module, opts)},
        "quality": {"before": quality_before, "after": measure_quality(task, module, opts)},
    }
    stem = Path(opts.report) if opts.report else Path(opts.output).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    Path(f"{stem}.md").write_text(markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """Human-readable summary of a `prune_checkpoint` report."""
    lines = [f"# Head pruning: {report['method']} on {report['checkpoint']}", "",
             f"Target: {report['target']}; pruned checkpoint: `{report['output']}`", "",
             "| attention | heads per layer before | after | kept (original indices) |", "|---|---|---|---|"]
    h = report["heads"]
    for kind, before in h["before"].items():
        lines.append(f"| {kind} | {before} ({sum(before)}) | {h['after'][kind]} ({sum(h['after'][kind])}) "
                     f"| {h['kept'][kind]} |")
    b, a = report["size"]["before"], report["size"]["after"]
    lines += ["", "| | params | FLOPs/token | " + " | ".join(f"latency ms @{k}" for k in b["latency_ms"]) + " |",
              "|---|---|---|" + "---|" * len(b["latency_ms"])]
    for name, s in (("before", b), ("after", a)):
        lat = " | ".join(f"{v:.2f}" for v in s["latency_ms"].values())
        lines.append(f"| {name} | {s['params']['total']:,} | {s['flops_per_token']:,.0f} | {lat} |")
    q = report["quality"]
    if q["before"] is not None:
        keys = [k for k in ("bleu", "chrf", "f1", "spearman") if k in q["before"]]
        lines += ["", "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name in ("before", "after"):
            lines.append(f"| {name} | " + " | ".join(f"{q[name][k]:.2f}" if k != "f1" else f"{q[name][k]:.4f}"
                                                     for k in keys) + " |")
    return "\n".join(lines) + "\n"
