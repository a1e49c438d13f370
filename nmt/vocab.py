"""SentencePiece vocabulary for translation: trained once per data+options, cached by hash.

Joint (one model on both languages) or per language. Per language, the target pieces are
stored after the source pieces in one id space (specials shared), so the transformer keeps
one tied embedding table either way.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class VocabSpec:
    """What a network must agree with in the data: vocabulary size and special ids."""

    vocab_size: int
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
NUM_SPECIALS = 4


def _train(lines: Iterable[str], vocab_size: int, model_type: str) -> bytes:
    """Train a SentencePiece model on `lines` (streamed into it); returns the serialized model proto."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID,
        bos_id=BOS_ID, eos_id=EOS_ID, num_threads=os.cpu_count() or 1, minloglevel=2,
        hard_vocab_limit=False,
    )
    _return_freed_heap()
    return model.getvalue()


def _return_freed_heap() -> None:
    """Hand the heap SentencePiece freed back to the OS (glibc keeps it otherwise): at WMT size that is hundreds
    of MiB a training run would hold for nothing. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Vocab:
    """Source/target SentencePiece processors behind one id space."""

    def __init__(self, src_proto: bytes, tgt_proto: bytes | None = None) -> None:
        self.src_proto, self.tgt_proto = src_proto, tgt_proto
        self.src = spm.SentencePieceProcessor(model_proto=src_proto)
        self.tgt = spm.SentencePieceProcessor(model_proto=tgt_proto) if tgt_proto else self.src
        # Per-language: target piece p (non-special) lives at id p + offset.
        src_size = self.src.get_piece_size()
        self.offset = 0 if tgt_proto is None else src_size - NUM_SPECIALS
        self.size = src_size if tgt_proto is None else src_size + self.tgt.get_piece_size() - NUM_SPECIALS

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Source sentences -> piece ids (no BOS/EOS)."""
        return self.src.encode(lines)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        """Target sentences -> ids in the shared id space (no BOS/EOS)."""
        ids = self.tgt.encode(lines)
        if self.offset:
            ids = [[i + self.offset if i >= NUM_SPECIALS else i for i in sent] for sent in ids]
        return ids

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Target ids -> detokenised text (specials dropped)."""
        local = [[i - self.offset for i in sent if i >= NUM_SPECIALS] for sent in ids]
        return self.tgt.decode(local)

    def to_state(self) -> dict:
        """Everything needed to rebuild this vocabulary (stored in checkpoints)."""
        return {"src_proto": self.src_proto, "tgt_proto": self.tgt_proto}

    @classmethod
    def from_state(cls, state: dict) -> Vocab:
        """The vocabulary stored by `to_state` (a checkpoint entry)."""
        return cls(state["src_proto"], state["tgt_proto"])


def train_vocab(src_lines: Iterable[str], tgt_lines: Iterable[str], vocab_size: int, model_type: str,
                joint: bool) -> Vocab:
    """Train the SentencePiece model(s) on the lines (lists or streams; each iterated once)."""
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"data.spm_model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if joint:
        return Vocab(_train(itertools.chain(src_lines, tgt_lines), vocab_size, model_type))
    return Vocab(_train(src_lines, vocab_size, model_type), _train(tgt_lines, vocab_size, model_type))


def build_vocab(
    src_lines: list[str], tgt_lines: list[str], vocab_size: int, model_type: str, joint: bool,
    cache_dir: Path,
) -> Vocab:
    """Train (or load from `cache_dir`, keyed by the lines' contents and the options) the SentencePiece model(s)."""
    key = hashlib.sha256(json.dumps([vocab_size, model_type, joint]).encode())
    for line in itertools.chain(src_lines, tgt_lines):
        key.update(line.encode())
    path = Path(cache_dir) / f"spm-{key.hexdigest()[:16]}.json"
    if (cached := load_vocab_file(path)) is not None:
        return cached
    vocab = train_vocab(src_lines, tgt_lines, vocab_size, model_type, joint)
    save_vocab_file(path, vocab)
    return vocab


def load_vocab_file(path: Path) -> Vocab | None:
    """The vocabulary `save_vocab_file` wrote at `path`, or None if there is none."""
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return Vocab(bytes.fromhex(state["src"]), bytes.fromhex(state["tgt"]) if state["tgt"] else None)


def save_vocab_file(path: Path, vocab: Vocab) -> None:
    """Write `vocab`'s model protos to `path` atomically (DDP ranks may train concurrently: whichever finishes
    last replaces the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump({"src": vocab.src_proto.hex(), "tgt": vocab.tgt_proto.hex() if vocab.tgt_proto else None}, f)
    os.replace(f.name, path)
