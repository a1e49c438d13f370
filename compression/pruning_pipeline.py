"""Prune attention heads of a trained checkpoint: score, choose, cut, save, report.

The pipeline behind `prune_heads.py`. A checkpoint of an NMT `TranslationModule` or an NER
`TaggerModule` (detected from its hyper-parameters) is loaded, its heads are ranked by
`method` (`taylor`: Michel et al. |dL/d mask_h| over scoring data; `random`: the baseline;
`gates`: the trained hard-concrete gates), the least important ones are cut out physically
(`compression.prune`), and the pruned module is saved with its own checkpoint hooks, so
`<Module>.load_from_checkpoint(path, weights_only=False)` rebuilds it from the file alone.

Gates: heads whose eval-time gate is <= `gate_threshold` (or the lowest-ranked ones for a
count target) are removed, the kept heads' eval-time gate values are folded into the output
projection's input columns and the gates are detached, so the pruned model has no gates and
computes exactly what the gated model computed at eval on the kept heads.

The report (`REPORT_KEYS`) has heads kept per layer and type, size (`compression.report`:
params, FLOPs per token, median CPU latency per batch size) and quality (BLEU/chrF or F1)
before and after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn

from compression.gates import attached_gates, detach_gates
from compression.heads import attention_modules, check_types
from compression.importance import random_importance, taylor_importance
from compression.prune import HeadPlan, head_config, heads_to_keep, prune_model
from compression.report import size_report
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
    src: str | None = None
    ref: str | None = None
    conll: str | None = None
    score_sentences: int = 500
    score_batch_size: int = 32
    eval_src: str | None = None
    eval_ref: str | None = None
    eval_conll: str | None = None
    beam_size: int = 5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64])
    seq_len: int = 24
    latency_repeats: int = 10
    seed: int = 0
    report: str | None = None


# ----------------------------------------------------------------------------- loading
def load_module(path: str | Path) -> tuple[str, LightningModule]:
    """('nmt' | 'ner', module in eval mode on CPU) for a TranslationModule / TaggerModule checkpoint."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "arch" in hparams:
        from nmt.module import TranslationModule
        task, cls = "nmt", TranslationModule
    elif "bert_config" in hparams or "checkpoint_dir" in hparams:
        from ner.module import TaggerModule
        task, cls = "ner", TaggerModule
    else:
        raise ValueError(f"{str(path)!r} is neither a TranslationModule nor a TaggerModule checkpoint "
                         f"(hyper-parameters: {sorted(hparams)})")
    return task, cls.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval()


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


# ----------------------------------------------------------------------------- scoring data
def _need(path: str | None, flag: str, why: str) -> Path:
    if not path:
        raise ValueError(f"scoring data missing: {why} needs {flag}")
    if not Path(path).is_file():
        raise ValueError(f"scoring data missing: {flag} file {path!r} does not exist")
    return Path(path)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def nmt_batches(module: LightningModule, src: Path, ref: Path, n: int, batch_size: int) -> list[dict]:
    """Teacher-forcing batches from the first `n` lines of a parallel text pair."""
    from nmt.data import ParallelSplit, collate, read_parallel
    s, t, _ = read_parallel(src, ref)
    s, t = s[:n], t[:n]
    split = ParallelSplit("score", module.vocab.encode_src(s), module.vocab.encode_tgt(t), s, t)
    return [collate(split, idx) for idx in _chunks(list(range(len(split))), batch_size)]


def nmt_loss(module: nn.Module, batch: dict) -> Tensor:
    """Mean token cross-entropy (no smoothing) of a TranslationModule on a teacher-forcing batch."""
    logits = module.model(batch["src"], batch["tgt_in"])
    return F.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=module.cfg.pad_id)


def ner_batches(module: LightningModule, conll: Path, n: int, batch_size: int) -> list[dict]:
    """Tagger batches (sub-token windows) from the first `n` sentences of a CoNLL file."""
    from ner.align import SentenceEncoder
    from ner.conll import read_conll, to_iob2
    from ner.data import collate
    sentences, _ = to_iob2(read_conll(conll))
    encoder = SentenceEncoder(module.tokenizer, module.labels, module.max_length)
    examples = [e for i, s in enumerate(sentences[:n]) for e in encoder(s.tokens, i, s.tags)]
    pad_id = module.tokenizer.token_to_id("[PAD]") or 0
    return [collate(chunk, pad_id) for chunk in _chunks(examples, batch_size)]


def ner_loss(module: nn.Module, batch: dict) -> Tensor:
    """Sub-token cross-entropy of a TaggerModule on a batch."""
    from ner.align import IGNORE
    logits = module(batch["input_ids"], batch["attention_mask"], batch["casing"])
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)


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
def _example_inputs(task: str, module: LightningModule, seq_len: int, seed: int) -> Callable[[int], tuple]:
    def make(batch: int) -> tuple:
        gen = torch.Generator().manual_seed(seed)
        if task == "nmt":
            high = module.cfg.vocab_size
            return (torch.randint(4, high, (batch, seq_len), generator=gen),
                    torch.randint(4, high, (batch, seq_len), generator=gen))
        ids = torch.randint(1000 if module.bert.cfg.vocab_size > 2000 else 1,
                            module.bert.cfg.vocab_size, (batch, seq_len), generator=gen)
        return ids, torch.ones_like(ids)
    return make


def measure_size(task: str, module: LightningModule, opts: PruneOptions) -> dict:
    """`size_report` of the network that is pruned (NMT seq2seq / tagger) at `opts.batch_sizes`."""
    target = module.model if task == "nmt" else module
    make = _example_inputs(task, module, opts.seq_len, opts.seed)

    def count(inputs: tuple) -> int:
        return inputs[-1].numel() if task == "nmt" else inputs[0].numel()  # target / input tokens

    with torch.no_grad():
        return size_report(target, make, opts.batch_sizes, repeats=opts.latency_repeats, warmup=1,
                           count_tokens=count)


def measure_quality(task: str, module: LightningModule, opts: PruneOptions) -> dict | None:
    """BLEU/chrF on --eval_src/--eval_ref (NMT) or entity F1 on --eval_conll (NER); None without data."""
    module.eval()
    if task == "nmt":
        if not (opts.eval_src and opts.eval_ref):
            return None
        from nmt.translate import evaluate_file
        with torch.no_grad():
            result = evaluate_file(module, Path(opts.eval_src), Path(opts.eval_ref), opts.beam_size)
        result.pop("hypotheses")
        return result
    if not opts.eval_conll:
        return None
    from ner.module import score_conll
    scores = score_conll(module, _need(opts.eval_conll, "--eval_conll", "F1"))
    return {k: scores[k] for k in ("f1", "precision", "recall", "sentences")}


# ----------------------------------------------------------------------------- saving
def save_checkpoint(module: LightningModule, path: str | Path) -> dict:
    """Write the model part of a Lightning checkpoint through the module's own save hook.

    Gates are gone after pruning, so `gate_types` and `l0_lambda` are reset in the saved
    hyper-parameters (a reload would otherwise re-attach gates / demand an L0 term).
    """
    return save_module_checkpoint(module, path, gate_types=None, l0_lambda=0.0)


def _jsonable(scores: dict[str, Tensor]) -> dict[str, list[list[float | None]]]:
    return {k: [[None if math.isnan(v) else round(v, 6) for v in row] for row in s.tolist()]
            for k, s in scores.items()}


# ----------------------------------------------------------------------------- pipeline
def plan_pruning(task: str, module: LightningModule, opts: PruneOptions) -> tuple[HeadPlan, dict | None]:
    """(plan {type: [kept current head indices per layer]}, importance scores or None)."""
    if opts.method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {opts.method!r}")
    network = module.compressible_network()
    if (opts.prune is None) == (opts.gate_threshold is None):
        raise ValueError("give exactly one target: --prune N|FRACTION|TYPE=AMOUNT,... or --gate_threshold T")
    if opts.gate_threshold is not None and opts.method != "gates":
        raise ValueError("--gate_threshold only applies to --method gates")
    if opts.method == "gates" and not attached_gates(network):
        raise ValueError(f"--method gates: checkpoint {opts.checkpoint!r} has no head gates "
                         "(fine-tune it with gate_types / l0_lambda first, e.g. configs/nmt/gates_l0_0.05.yaml)")
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
        if task == "nmt":
            batches = nmt_batches(module, _need(opts.src, "--src", "taylor scoring"),
                                  _need(opts.ref, "--ref", "taylor scoring"), opts.score_sentences,
                                  opts.score_batch_size)
            loss = nmt_loss
        else:
            batches = ner_batches(module, _need(opts.conll, "--conll", "taylor scoring"), opts.score_sentences,
                                  opts.score_batch_size)
            loss = ner_loss
        scores = taylor_importance(module, batches, loss, types)
    plan = heads_to_keep(scores, target)
    return plan, scores


def prune_checkpoint(opts: PruneOptions) -> dict:
    """Run the whole pipeline; writes `opts.output` and the report (.json, .md); returns the report."""
    task, module = load_module(opts.checkpoint)
    network = module.compressible_network()
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
        "task": task, "checkpoint": str(opts.checkpoint), "output": str(opts.output), "method": opts.method,
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
        keys = [k for k in ("bleu", "chrf", "f1") if k in q["before"]]
        lines += ["", "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name in ("before", "after"):
            lines.append(f"| {name} | " + " | ".join(f"{q[name][k]:.2f}" if k != "f1" else f"{q[name][k]:.4f}"
                                                     for k in keys) + " |")
    return "\n".join(lines) + "\n"
