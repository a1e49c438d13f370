"""Parallel text for translation: reading, checks, length filtering, token-budget batches.

Batches hold up to `max_tokens` padded tokens (longest side), built by `core.batching`: the
order is a pure function of the epoch and resumes mid-epoch exactly.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from core.batching import LengthBatchSampler, ResumableDataModule
from core.data_dir import REPO_ROOT, resolve_data_dir
from core.tables import file_digest
from nmt import corpus
from nmt.corpus import ArrowParallelSplit
from nmt.vocab import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Vocab,
    VocabSpec,
    build_vocab,
    load_vocab_file,
    save_vocab_file,
    train_vocab,
)


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str], int]:
    """Aligned lines of two files; pairs with an empty or blank side are dropped.

    Returns (src_lines, tgt_lines, dropped). Raises on a missing or empty file, or when the
    two files have different line counts (both counts named).
    """
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise FileNotFoundError(f"parallel data file not found: {path}")
    src = src_path.read_text(encoding="utf-8").splitlines()
    tgt = tgt_path.read_text(encoding="utf-8").splitlines()
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not lines:
            raise ValueError(f"parallel data file is empty: {path}")
    if len(src) != len(tgt):
        raise ValueError(
            f"parallel files are not aligned: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}"
        )
    keep = [i for i, (s, t) in enumerate(zip(src, tgt, strict=True)) if s.strip() and t.strip()]
    return [src[i].strip() for i in keep], [tgt[i].strip() for i in keep], len(src) - len(keep)


@dataclass
class ParallelSplit:
    """One encoded split: ids without BOS/EOS, raw text kept for BLEU and samples."""

    name: str
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    src_text: list[str]
    tgt_text: list[str]

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) lengths in pieces + EOS."""
        return (np.asarray([len(s) + 1 for s in self.src_ids], dtype=np.int64),
                np.asarray([len(t) + 1 for t in self.tgt_ids], dtype=np.int64))

    def rows(self, indices: list[int]) -> tuple[list[list[int]], list[list[int]], list[str], list[str]]:
        """(source ids, target ids, source text, target text) of the pairs `indices`."""
        return ([self.src_ids[i] for i in indices], [self.tgt_ids[i] for i in indices],
                [self.src_text[i] for i in indices], [self.tgt_text[i] for i in indices])


def pad(seqs: list[list[int]]) -> torch.Tensor:
    """Id sequences as one (batch, longest) tensor, right-padded with PAD_ID."""
    out = torch.full((len(seqs), max(map(len, seqs))), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def collate(split: ParallelSplit | ArrowParallelSplit, indices: list[int]) -> dict:
    """Padded tensors: src = ids+EOS, tgt_in = BOS+ids, tgt_out = ids+EOS; plus raw text."""
    src_ids, tgt, src_text, ref_text = split.rows(indices)
    return {
        "src": pad([s + [EOS_ID] for s in src_ids]),
        "tgt_in": pad([[BOS_ID] + t for t in tgt]),
        "tgt_out": pad([t + [EOS_ID] for t in tgt]),
        "src_text": src_text,
        "ref_text": ref_text,
    }


class TranslationDataModule(ResumableDataModule):
    """Parallel corpus `<split>.<lang>` files + SentencePiece + token-budget batching.

    Args:
        dir: data folder (or its parent holding `subdir`); default $DATA_DIR, then ../shared/data.
        subdir: dataset folder name under the data root.
        src_lang / tgt_lang: file suffixes.
        train_split / val_split / test_split: file stems.
        vocab_size / spm_model_type / joint_vocab: SentencePiece options.
        max_len: pairs with more pieces than this on either side are dropped from training (counted).
        max_tokens: padded tokens per training batch; eval_max_tokens for val/test.
        cache_dir: where trained SentencePiece models are cached (keyed by data + options), and (under
            `arrow/`) the encoded Arrow tables of the `datasets` path.
        source: "text" reads the `<split>.<lang>` files into lists (in memory); "datasets" reads them, or
            `files` / `hub`, through Hugging Face `datasets` into memory-mapped Arrow tables (`nmt.corpus`).
        files: {train, val, test} -> a Parquet / JSON / Arrow file or a save_to_disk folder per split
            (implies source "datasets").
        hub / hub_config: a hub dataset id and config (e.g. wmt14, de-en) for users online; `split_names`
            then name the hub's splits (e.g. --data.val_split validation --data.test_split test).
        num_proc: worker processes that encode the Arrow tables the first time.
        vocab_sample: at most this many training pairs (evenly spaced) train SentencePiece ("datasets"; 1M pairs
            is 2M sentences to a joint model, the size SentencePiece recommends sampling).
    """

    def __init__(
        self, dir: str | None = None, subdir: str = "multi30k", src_lang: str = "en", tgt_lang: str = "de",
        train_split: str = "train", val_split: str = "val", test_split: str = "test_2016_flickr",
        vocab_size: int = 8000, spm_model_type: str = "bpe", joint_vocab: bool = True, max_len: int = 100,
        max_tokens: int = 4000, eval_max_tokens: int = 6000, seed: int = 1234,
        cache_dir: str = str(REPO_ROOT / "cache" / "spm"), limit_train: int | None = None,
        source: Literal["text", "datasets"] = "text", files: dict[str, str] | None = None,
        hub: str | None = None, hub_config: str | None = None, num_proc: int | None = None,
        vocab_sample: int = 1_000_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # shown beside the model's in TensorBoard's hparams view
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.max_len, self.max_tokens, self.eval_max_tokens, self.seed = max_len, max_tokens, eval_max_tokens, seed
        self.limit_train, self.num_proc, self.cache_dir = limit_train, num_proc, Path(cache_dir)
        self.files = self._table_files(files)
        self.hub, self.hub_config = hub, hub_config
        self.use_datasets = source == "datasets" or bool(files) or bool(hub)
        if source not in ("text", "datasets"):
            raise ValueError(f"data.source must be 'text' or 'datasets', got {source!r}")
        self.root = resolve_data_dir(dir, subdir) if not (self.files or hub) else None
        self.splits: dict[str, ParallelSplit | ArrowParallelSplit] = {}
        vocab_options = (vocab_size, spm_model_type, joint_vocab)
        if self.use_datasets:
            self.vocab: Vocab = self._table_vocab(*vocab_options, vocab_sample)
        else:
            self._text = {name: self._read(name) for name in self.split_names}
            self.vocab = build_vocab(*self._text["train"], *vocab_options, self.cache_dir)

    def _table_vocab(self, vocab_size: int, model_type: str, joint: bool, sample: int) -> Vocab:
        """The SentencePiece model of the table path, cached under a key of the training data's digest and the
        options: a second start loads it without reading millions of training sentences back into Python."""
        options = [vocab_size, model_type, joint, self.limit_train, sample, self.src_lang, self.tgt_lang]
        key = hashlib.blake2b(f"{self._data_key('train')}|{options}".encode(), digest_size=12).hexdigest()
        path = self.cache_dir / f"spm-data-{key}.json"
        if (vocab := load_vocab_file(path)) is None:
            src_train, tgt_train = corpus.training_text(self._load_table("train"), self.limit_train, sample)
            vocab = train_vocab(src_train, tgt_train, vocab_size, model_type, joint)  # keyed above
            save_vocab_file(path, vocab)
        return vocab

    def _table_files(self, files: dict[str, str] | None) -> dict[str, Path]:
        if not files:
            return {}
        if sorted(files) != sorted(self.split_names):
            raise ValueError(f"data.files must name exactly the splits {sorted(self.split_names)}, got {sorted(files)}")
        return {name: Path(path).expanduser() for name, path in files.items()}

    def _load_table(self, name: str):
        # Not cached: a raw table is memory-mapped, and holding it while SentencePiece trains and the encoded
        # table is mapped would add its pages to the first start's peak RSS; reopening it costs milliseconds.
        hf_cache = self.cache_dir / "hf"
        if self.hub:
            return corpus.load_hub(self.hub, self.hub_config, self.split_names[name], self.src_lang, self.tgt_lang,
                                   hf_cache)
        source = self.files.get(name) or self._files(name)
        return corpus.load_table(source, self.src_lang, self.tgt_lang, hf_cache)

    @functools.cache  # noqa: B019 (one datamodule per run; hashing a WMT-size file once is enough)
    def _data_key(self, name: str) -> str:
        """Digest of a split's data: its files' contents (a hub split: the dataset's fingerprint)."""
        if self.hub:
            return self._load_table(name)._fingerprint
        source = self.files.get(name) or self._files(name)
        return "-".join(file_digest(p) for p in (source if isinstance(source, tuple) else (source,)))

    def _cache_file(self, name: str) -> Path:
        """The encoded table's cache file: keyed by the split's data and the SentencePiece model."""
        data = self._data_key(name)
        key = hashlib.blake2b(f"{data}|{self.src_lang}|{self.tgt_lang}|{corpus.vocab_digest(self.vocab)}".encode(),
                              digest_size=12).hexdigest()
        return self.cache_dir / "arrow" / f"{name}-{key}.arrow"

    def _files(self, name: str) -> tuple[Path, Path]:
        stem = self.split_names[name]
        return self.root / f"{stem}.{self.src_lang}", self.root / f"{stem}.{self.tgt_lang}"

    def _read(self, name: str) -> tuple[list[str], list[str]]:
        src, tgt, dropped = read_parallel(*self._files(name))
        if name == "train" and self.limit_train:
            src, tgt = src[: self.limit_train], tgt[: self.limit_train]
        if dropped:
            rank_zero_info(f"[data] {name}: skipped {dropped} pairs with an empty or blank side")
        return src, tgt

    def data_files(self) -> list[Path]:
        """Every file this datamodule reads (for the run record)."""
        if self.hub:
            return []
        return [p for name in self.split_names for p in ((self.files[name],) if self.files else self._files(name))]

    def spec(self) -> VocabSpec:
        """What the model must agree with: vocabulary size and special ids."""
        return VocabSpec(vocab_size=self.vocab.size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)

    @override
    def prepare_data(self) -> None:
        # One process per node encodes the Arrow tables; every rank memory-maps them in `setup`.
        if self.use_datasets:
            for name in self.split_names:
                corpus.encoded(functools.partial(self._load_table, name), self.vocab, self._cache_file(name),
                               self.num_proc)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.use_datasets:
            self._setup_tables()
            return
        if self.trainer is not None and not self.splits:
            self.check_same_data("-".join(file_digest(p) for p in self.data_files()))
        for name, (src, tgt) in self._text.items():
            if name in self.splits:
                continue
            src_ids, tgt_ids = self.vocab.encode_src(src), self.vocab.encode_tgt(tgt)
            if name == "train":
                keep = [i for i in range(len(src)) if 0 < len(src_ids[i]) < self.max_len
                        and 0 < len(tgt_ids[i]) < self.max_len]
                rank_zero_info(f"[data] train: {len(src)} pairs, dropped {len(src) - len(keep)} longer than "
                               f"max_len={self.max_len} pieces")
                src_ids, tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
                src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            self.splits[name] = ParallelSplit(name, src_ids, tgt_ids, src, tgt)

    def _setup_tables(self) -> None:
        for name in self.split_names:
            if name in self.splits:
                continue
            cache = self._cache_file(name)
            self.check_same_data(cache.name)
            table = corpus.encoded(functools.partial(self._load_table, name), self.vocab, cache, self.num_proc)
            split = ArrowParallelSplit(name, table)
            if name == "train":
                if self.limit_train:
                    split = split.select(np.arange(min(self.limit_train, len(split))))
                src_lens, tgt_lens = split.lengths()
                keep = np.flatnonzero((src_lens > 1) & (src_lens <= self.max_len)
                                      & (tgt_lens > 1) & (tgt_lens <= self.max_len))
                rank_zero_info(f"[data] train: {len(split)} pairs, dropped {len(split) - len(keep)} longer than "
                               f"max_len={self.max_len} pieces")
                if len(keep) < len(split):
                    split = split.select(keep)
            self.splits[name] = split

    def _loader(self, name: str, train: bool, max_tokens: int) -> DataLoader:
        split = self.splits[name]
        rank, world = self.shard()
        src_lens, tgt_lens = split.lengths()
        sampler = LengthBatchSampler(
            np.maximum(src_lens, tgt_lens), max_tokens=max_tokens,
            shuffle=train, seed=self.seed, rank=rank, num_replicas=world, tiebreak=src_lens, even_ranks=train,
        )
        return self.make_loader(split, sampler, lambda idx: collate(split, idx), train=train)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.max_tokens)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_max_tokens)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_max_tokens)
