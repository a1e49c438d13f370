"""Parallel text for translation: reading, checks, length filtering, token-budget batches.

Batches hold up to `max_tokens` padded target tokens, built from length-sorted buckets and
shuffled per epoch from `seed + epoch`, so a batch order is a pure function of the epoch.
The datamodule records how many batches of the current epoch were consumed in its
checkpoint state; a resumed run skips exactly those and continues the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from core.data_dir import REPO_ROOT, resolve_data_dir
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab, build_vocab


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


class EpochPermutation(Sampler[int]):
    """Sentence order for one epoch: a permutation seeded by `seed + epoch` (or identity).

    Lightning calls `set_epoch` on `batch_sampler.sampler`, which is how the batch sampler
    above it learns the epoch.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.size))
        return iter(np.random.default_rng(self.seed + self.epoch).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


class TokenBatchSampler(Sampler[list[int]]):
    """Index batches of at most `max_tokens` padded tokens (max length x batch size).

    The epoch's sentence order (`self.sampler`) is stably sorted by (target, source) length,
    cut into batches, and the batch order shuffled from `seed + epoch`. With several processes
    each rank takes every `num_replicas`-th batch (same count on every rank). `resume_at(epoch,
    n)` makes the iteration of that epoch start after its first `n` batches.
    """

    def __init__(self, src_lens: list[int], tgt_lens: list[int], max_tokens: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, num_replicas: int = 1) -> None:
        self.src_lens, self.tgt_lens = np.asarray(src_lens), np.asarray(tgt_lens)
        self.sampler = EpochPermutation(len(src_lens), shuffle, seed)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.rank, self.num_replicas = rank, num_replicas
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        order = np.asarray(list(self.sampler), dtype=np.int64)
        order = order[np.lexsort((self.src_lens[order], self.tgt_lens[order]))]
        batches, current, longest = [], [], 0
        for i in order.tolist():
            need = max(self.tgt_lens[i], self.src_lens[i])
            if current and max(longest, need) * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, need)
        if current:
            batches.append(current)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.sampler.epoch])
            batches = [batches[j] for j in rng.permutation(len(batches))]
        per_rank = len(batches) // self.num_replicas
        return batches[self.rank :: self.num_replicas][:per_rank]

    def __iter__(self):
        batches = self.batches()
        skip = 0
        if self._resume is not None and self._resume[0] == self.sampler.epoch:
            skip = self._resume[1]
        self._resume = None
        yield from batches[skip:]

    def __len__(self) -> int:
        # The full epoch even when resuming: Lightning counts the skipped batches as done.
        return len(self.batches())


def collate(split: ParallelSplit, indices: list[int]) -> dict:
    """Padded tensors: src = ids+EOS, tgt_in = BOS+ids, tgt_out = ids+EOS; plus raw text."""
    src = [split.src_ids[i] + [EOS_ID] for i in indices]
    tgt = [split.tgt_ids[i] for i in indices]

    def pad(seqs: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(seqs), max(map(len, seqs))), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(seqs):
            out[row, : len(seq)] = torch.tensor(seq)
        return out

    return {
        "src": pad(src),
        "tgt_in": pad([[BOS_ID] + t for t in tgt]),
        "tgt_out": pad([t + [EOS_ID] for t in tgt]),
        "src_text": [split.src_text[i] for i in indices],
        "ref_text": [split.tgt_text[i] for i in indices],
    }


class TranslationDataModule(L.LightningDataModule):
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
        self._resume: dict | None = None
        self._train_sampler: TokenBatchSampler | None = None

    def _files(self, name: str) -> tuple[Path, Path]:
        stem = self.split_names[name]
        return self.root / f"{stem}.{self.src_lang}", self.root / f"{stem}.{self.tgt_lang}"

    def _read(self, name: str) -> tuple[list[str], list[str]]:
        src, tgt, dropped = read_parallel(*self._files(name))
        if name == "train" and self.limit_train:
            src, tgt = src[: self.limit_train], tgt[: self.limit_train]
        if dropped:
            print(f"[data] {name}: skipped {dropped} pairs with an empty or blank side")
        return src, tgt

    def data_files(self) -> list[Path]:
        """Every file this datamodule reads (for the run record)."""
        return [p for name in self.split_names for p in self._files(name)]

    def spec(self) -> dict:
        """What the model must agree with: vocabulary size and special ids."""
        return {"vocab_size": self.vocab.size, "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID}

    def setup(self, stage: str | None = None) -> None:
        for name, (src, tgt) in self._text.items():
            if name in self.splits:
                continue
            src_ids, tgt_ids = self.vocab.encode_src(src), self.vocab.encode_tgt(tgt)
            if name == "train":
                keep = [i for i in range(len(src)) if 0 < len(src_ids[i]) < self.max_len
                        and 0 < len(tgt_ids[i]) < self.max_len]
                print(f"[data] train: {len(src)} pairs, dropped {len(src) - len(keep)} longer than "
                      f"max_len={self.max_len} pieces")
                src_ids, tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
                src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            self.splits[name] = ParallelSplit(name, src_ids, tgt_ids, src, tgt)

    def _loader(self, name: str, shuffle: bool, max_tokens: int) -> DataLoader:
        split = self.splits[name]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = TokenBatchSampler(
            [len(s) + 1 for s in split.src_ids], [len(t) + 1 for t in split.tgt_ids], max_tokens,
            shuffle=shuffle, seed=self.seed, rank=rank if shuffle else 0, num_replicas=world if shuffle else 1,
        )
        # An own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would see different dropout masks than an uninterrupted one.
        return DataLoader(split, batch_sampler=sampler, collate_fn=lambda idx: collate(split, idx),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", True, self.max_tokens)
        self._train_sampler = loader.batch_sampler
        if self._resume is not None:
            self._train_sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
            self._resume = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_max_tokens)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_max_tokens)

    def state_dict(self) -> dict:
        """Position in the epoch's batch order, saved in every checkpoint."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume = dict(state_dict)
