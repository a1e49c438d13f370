"""Parallel text for translation: reading, checks, length filtering, token-budget batches.

Batches hold up to `max_tokens` padded tokens (longest side), built by `core.batching`: the
order is a pure function of the epoch and resumes mid-epoch exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from core.batching import LengthBatchSampler, ResumableDataModule
from core.data_dir import REPO_ROOT, resolve_data_dir
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab, VocabSpec, build_vocab


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


def pad(seqs: list[list[int]]) -> torch.Tensor:
    """Id sequences as one (batch, longest) tensor, right-padded with PAD_ID."""
    out = torch.full((len(seqs), max(map(len, seqs))), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def collate(split: ParallelSplit, indices: list[int]) -> dict:
    """Padded tensors: src = ids+EOS, tgt_in = BOS+ids, tgt_out = ids+EOS; plus raw text."""
    src = [split.src_ids[i] + [EOS_ID] for i in indices]
    tgt = [split.tgt_ids[i] for i in indices]

    return {
        "src": pad(src),
        "tgt_in": pad([[BOS_ID] + t for t in tgt]),
        "tgt_out": pad([t + [EOS_ID] for t in tgt]),
        "src_text": [split.src_text[i] for i in indices],
        "ref_text": [split.tgt_text[i] for i in indices],
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
        cache_dir: where trained SentencePiece models are cached (keyed by data + options).
    """

    def __init__(
        self, dir: str | None = None, subdir: str = "multi30k", src_lang: str = "en", tgt_lang: str = "de",
        train_split: str = "train", val_split: str = "val", test_split: str = "test_2016_flickr",
        vocab_size: int = 8000, spm_model_type: str = "bpe", joint_vocab: bool = True, max_len: int = 100,
        max_tokens: int = 4000, eval_max_tokens: int = 6000, seed: int = 1234,
        cache_dir: str = str(REPO_ROOT / "cache" / "spm"), limit_train: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # shown beside the model's in TensorBoard's hparams view
        self.root = resolve_data_dir(dir, subdir)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}
        self.max_len, self.max_tokens, self.eval_max_tokens, self.seed = max_len, max_tokens, eval_max_tokens, seed
        self.limit_train = limit_train
        self._text = {name: self._read(name) for name in ("train", "val", "test")}
        src_train, tgt_train = self._text["train"]
        self.vocab: Vocab = build_vocab(src_train, tgt_train, vocab_size, spm_model_type, joint_vocab,
                                        Path(cache_dir))
        self.splits: dict[str, ParallelSplit] = {}

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
        return [p for name in self.split_names for p in self._files(name)]

    def spec(self) -> VocabSpec:
        """What the model must agree with: vocabulary size and special ids."""
        return VocabSpec(vocab_size=self.vocab.size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)

    @override
    def setup(self, stage: str | None = None) -> None:
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

    def _loader(self, name: str, train: bool, max_tokens: int) -> DataLoader:
        split = self.splits[name]
        rank, world = self.shard()
        src_lens, tgt_lens = [len(s) + 1 for s in split.src_ids], [len(t) + 1 for t in split.tgt_ids]
        sampler = LengthBatchSampler(
            [max(s, t) for s, t in zip(src_lens, tgt_lens, strict=True)], max_tokens=max_tokens,
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
