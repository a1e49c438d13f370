"""Student building and teacher handling for knowledge distillation owned by the LightningModules.

The modules (`TranslationModule`, `TaggerModule`) take `kd: KDConfig` (the teacher checkpoint of
the same module class, the loss's alpha and temperature, and the options some tasks add). The
teacher is loaded with `load_from_checkpoint`, frozen (`freeze_teacher`) and stored *outside* the
module's registered children (`attach_teacher`), so it appears neither in `state_dict()` / the
student's checkpoint nor in `parameters()` / the optimizer, and `module.train()` does not switch it
back to training mode. `kd` only says how training starts: a saved student's resolved config
(`core.config`) has none, so it reloads from its checkpoint alone.

`shape_bert_student` applies the construction-time compression hyperparameters of a student
encoder (`keep_layers`, `factorize_embedding_rank`, `share_layers`) through `compression.factorize` /
`compression.sharing`, so `compression.spec` records them in the checkpoint like any other
compression. `keep_layers` makes a shallower encoder out of chosen layers of the (teacher's)
stack: the result is a plain dense BERT with fewer layers, so the module writes the new layer
count back into its `bert_config` hyperparameter instead of a spec entry.

Teacher logits can be cached to disk (`compression.logit_cache`), so the teacher runs once per
training example instead of once per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from torch import nn

from compression.distill import freeze_teacher
from compression.factorize import FactorizedEmbedding, factorize_embedding
from compression.measure import parameter_counts
from compression.sharing import SharedLayerStack, reset_parameters, share_layers

TEACHER_ATTR = "_kd_teacher"
M = TypeVar("M", bound=nn.Module)


@dataclass
class KDConfig:
    """Knowledge distillation from a trained checkpoint of the same task.

    The loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the task's own loss
    (`compression.distill.kd_loss`). `hidden_weight` > 0 adds an MSE between student and teacher
    hidden states (BERT tasks); `cache` is a folder for the teacher's logits per training example
    (`compression.logit_cache`; the tagger). `teacher` None: no distillation (a config keeps its KD
    settings ready for a teacher given on the command line, `--model.init_args.kd.teacher PATH`).
    """

    teacher: str | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    cache: str | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"kd.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"kd.alpha must be in [0, 1], got {self.alpha}")
        if self.hidden_weight < 0:
            raise ValueError(f"kd.hidden_weight must be >= 0, got {self.hidden_weight}")


def load_teacher(cls: type[M], path: str | Path) -> M:
    """The trained `cls` checkpoint at `path`, on CPU, frozen and in eval mode.

    It is loaded with `teacher=None`, so a teacher that was itself distilled does not load
    its own teacher.
    """
    if not Path(path).is_file():
        raise ValueError(f"teacher checkpoint {str(path)!r} does not exist")
    teacher = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False, teacher=None)
    return freeze_teacher(teacher)


def attach_teacher(module: nn.Module, teacher: nn.Module | None) -> None:
    """Keep `teacher` on `module` without registering it (no state dict, no parameters)."""
    object.__setattr__(module, TEACHER_ATTR, teacher)


def get_teacher(module: nn.Module) -> nn.Module | None:
    """The teacher stored by `attach_teacher`, or None."""
    return module.__dict__.get(TEACHER_ATTR)


def prepare_teacher(module: nn.Module, device) -> nn.Module | None:
    """Move the teacher to `device` and (re)freeze it; called at fit start."""
    teacher = get_teacher(module)
    if teacher is not None:
        freeze_teacher(teacher.to(device))
    return teacher


def keep_bert_layers(bert: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the encoder layers at indices `keep` (in that order), in place; updates `bert.cfg`.

    Starting a shallow student from chosen teacher layers (DistilBERT, Sajjad et al. 2020
    "Poor man's BERT") keeps what those layers learnt instead of a random initialisation.
    """
    if isinstance(bert.layers, SharedLayerStack):
        raise ValueError("keep_layers selects layers of a dense encoder, but this encoder is already shared")
    n = len(bert.layers)
    keep = [int(i) for i in keep]
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < n for i in keep):
        raise ValueError(f"keep_layers must list distinct layer indices in [0, {n - 1}] "
                         f"(the encoder has {n} layers), got {keep}")
    bert.layers = nn.ModuleList(bert.layers[i] for i in keep)
    bert.cfg.num_hidden_layers = len(keep)
    return bert


@dataclass(frozen=True)
class StudentShape:
    """Construction-time compression of a BERT student (`shape_bert_student`).

    `keep_layers` (applied first) keeps only those encoder layers of the pretrained / `init_from`
    encoder; `share_layers` = {k, n[, init_from]}: k distinct layers applied n times, copied from
    encoder layer(s) `init_from` (or fresh with init_from null); `factorize_embedding_rank`: the
    word embedding as its rank-r SVD factorisation.
    """

    keep_layers: list[int] | None = None
    share_layers: dict | None = None
    factorize_embedding_rank: int | None = None


def shape_bert_student(
    bert: nn.Module, factorize_embedding_rank: int | None = None, share: Mapping | None = None,
    keep_layers: Sequence[int] | None = None,
) -> nn.Module:
    """Apply a student's construction-time compression (`StudentShape`'s fields) to a BertModel, in place.

    `keep_layers` (first) keeps those encoder layers only (`keep_bert_layers`).
    `share` = {"k", "n", "init_from" (optional: teacher layer index, list of k indices, or
    None for fresh layers)} replaces `bert.layers` by k distinct layers applied n times;
    `factorize_embedding_rank` swaps the word embedding for its rank-r SVD factorisation.
    A network that already has exactly that shape (e.g. from an `init_from` checkpoint) is
    left as is; a different existing shape is a ValueError.
    """
    if keep_layers is not None:
        keep_bert_layers(bert, keep_layers)
    if share:
        unknown = sorted(set(share) - {"k", "n", "init_from"})
        if unknown or "k" not in share or "n" not in share:
            raise ValueError(f"share_layers must be {{k, n[, init_from]}}, got {dict(share)}")
        k, n = int(share["k"]), int(share["n"])
        if isinstance(bert.layers, SharedLayerStack):
            if (bert.layers.k, bert.layers.n) != (k, n):
                raise ValueError(f"encoder is already shared as {bert.layers.k} x {bert.layers.n}, "
                                 f"share_layers asks for {k} x {n}")
        else:
            bert_init = getattr(bert, "_init_weights", None)

            def fresh(layer: nn.Module) -> None:  # LayerNorms reset, Linear/Embedding BERT-initialised
                reset_parameters(layer)
                if bert_init is not None:
                    layer.apply(bert_init)

            bert.layers = share_layers(bert.layers, k, n, init_from=share.get("init_from"), init_fn=fresh)
    if factorize_embedding_rank:
        emb = bert.embeddings.word_embeddings
        if isinstance(emb, FactorizedEmbedding):
            if emb.rank != factorize_embedding_rank:
                raise ValueError(f"word embedding is already factorised to rank {emb.rank}, "
                                 f"factorize_embedding_rank asks for {factorize_embedding_rank}")
        else:
            factorize_embedding(bert, factorize_embedding_rank)
    return bert


def parameter_line(model: nn.Module) -> str:
    """"N parameters (E embedding, rest non-embedding)", tied / shared weights counted once."""
    c = parameter_counts(model)
    return f"{c['total']:,} parameters ({c['embedding']:,} embedding, {c['non_embedding']:,} non-embedding)"


def init_from_teacher_layers(student: nn.Module, teacher: nn.Module, layers: Mapping[str, Sequence[int]]) -> None:
    """Copy a same-width teacher's weights into a shallower student, in place.

    `layers` maps a layer stack's name to the teacher layers its student layers start from, e.g.
    {"encoder": [0, 2], "decoder": [2]} for a Seq2SeqTransformer: student `encoder.1.*` gets
    teacher `encoder.2.*`. Every other tensor (embeddings, final norms) is copied by name. A
    missing teacher layer or a shape mismatch is one ValueError naming the key.
    """
    source = teacher.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        stack, _, rest = key.partition(".")
        src = key
        if stack in layers:
            index, _, tail = rest.partition(".")
            picks = list(layers[stack])
            if int(index) >= len(picks):
                raise ValueError(f"{stack!r} has more layers than the {len(picks)} teacher layers given ({picks})")
            src = f"{stack}.{picks[int(index)]}.{tail}"
        if src not in source:
            raise ValueError(f"teacher has no {src!r} for student {key!r} (teacher layers {dict(layers)})")
        if source[src].shape != value.shape:
            raise ValueError(f"teacher {src!r} {tuple(source[src].shape)} does not fit student {key!r} "
                             f"{tuple(value.shape)}: student and teacher must have the same width")
        state[key] = source[src]
    student.load_state_dict(state)
