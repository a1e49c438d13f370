"""Length-bucketed batches whose order is a function of the epoch, and exact resume.

Used by every datamodule: sentences are shuffled (seed + epoch), stably sorted by length,
cut into batches by a padded-token budget or a sentence count, and the batch order is
shuffled again. Lightning tells the epoch through `batch_sampler.sampler.set_epoch`. A
`ResumableDataModule` stores the position inside the epoch in every checkpoint, so a run
resumed mid-epoch continues with exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from typing_extensions import override


class EpochPermutation(Sampler[int]):
    """Sentence order for one epoch: a permutation seeded by `seed + epoch` (or identity)."""

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (the distributed-sampler protocol Lightning calls every epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


class LengthBatchSampler(Sampler[list[int]]):
    """Batches of similar length: up to `max_tokens` padded tokens or `batch_size` items.

    `lengths` decide the padding (a batch costs max length x size); `tiebreak` (optional)
    orders items of equal length (e.g. source length under target length). With several
    processes, with `even_ranks` (training, where DDP steps all ranks together) each rank takes
    every `num_replicas`-th batch, the same count on every rank, the last few batches dropped.
    Without (evaluation) each rank takes every `num_replicas`-th item of the length-sorted order
    and batches its share: every item once, and every rank the same number of items of the same
    lengths, so decoding work is balanced (dealing out whole batches is not: a split has a few
    batches only, and the one of the longest sentences decodes for the most steps).
    `resume_at(epoch, n)` makes that epoch's iteration start after its first `n` batches.
    """

    def __init__(
        self, lengths: Sequence[int], max_tokens: int | None = None, batch_size: int | None = None,
        shuffle: bool = False, seed: int = 0, rank: int = 0, num_replicas: int = 1,
        tiebreak: Sequence[int] | None = None, even_ranks: bool = True,
    ) -> None:
        if (max_tokens is None) == (batch_size is None):
            raise ValueError("give exactly one of max_tokens and batch_size")
        self.lengths = np.asarray(lengths)
        self.tiebreak = np.asarray(tiebreak) if tiebreak is not None else np.zeros_like(self.lengths)
        self.sampler = EpochPermutation(len(self.lengths), shuffle, seed)
        self.max_tokens, self.batch_size, self.shuffle, self.seed = max_tokens, batch_size, shuffle, seed
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.rank, self.num_replicas, self.even_ranks = rank, num_replicas, even_ranks
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches of `epoch`: where a mid-epoch checkpoint stopped."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (the distributed-sampler protocol Lightning calls every epoch)."""
        self.sampler.set_epoch(epoch)

    def _full(self, size: int, longest: int) -> bool:
        if self.batch_size is not None:
            return size > self.batch_size
        return longest * size > self.max_tokens

    def batches(self) -> list[list[int]]:
        """This epoch's batches for this rank."""
        order = np.asarray(list(self.sampler), dtype=np.int64)
        order = order[np.lexsort((self.tiebreak[order], self.lengths[order]))]
        if not self.even_ranks and self.num_replicas > 1:
            if len(order) < self.num_replicas:
                raise ValueError(f"{len(order)} evaluation items cannot give each of {self.num_replicas} processes "
                                 "a batch")
            order = order[self.rank :: self.num_replicas]
        batches, current, longest = [], [], 0
        for i in order.tolist():
            n = int(self.lengths[i])
            if current and self._full(len(current) + 1, max(longest, n)):
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.sampler.epoch, 1])
            batches = [batches[j] for j in rng.permutation(len(batches))]
        if not self.even_ranks:
            return batches
        return batches[self.rank :: self.num_replicas][: len(batches) // self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        # A generator on purpose: Lightning calls iter() before set_epoch(), so the epoch (and
        # whether the resume position applies) must be read at the first next(), not here.
        batches = self.batches()
        skip = 0
        if self._resume is not None and self._resume[0] == self.sampler.epoch:
            skip = self._resume[1]
        self._resume = None
        yield from batches[skip:]

    def __len__(self) -> int:
        # The full epoch even when resuming: Lightning counts the skipped batches as done.
        return len(self.batches())


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose checkpoints hold the position in the training epoch.

    Subclasses build loaders with `make_loader`; the training loader picks up a pending
    resume position.
    """

    def __init__(self) -> None:
        super().__init__()
        self._resume: dict | None = None
        self._train_sampler: LengthBatchSampler | None = None

    def make_loader(self, dataset: Sequence, sampler: LengthBatchSampler, collate_fn: Callable,
                    train: bool = False, num_workers: int = 0) -> DataLoader:
        """A DataLoader over `sampler`; for training, resumed at the checkpointed position."""
        if train:
            self._train_sampler = sampler
            if self._resume is not None:
                sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
                self._resume = None
        # An own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would see different dropout masks than an uninterrupted one.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(sampler.seed))

    def shard(self) -> tuple[int, int]:
        """(rank, world size) of this process: training and evaluation batches are split across processes.

        The batch samplers shard themselves, so Lightning must not inject a `DistributedSampler`
        (`core.cli` defaults `trainer.use_distributed_sampler` to false); a Trainer that would is refused."""
        if self.trainer is None:
            return 0, 1
        if self.trainer.world_size > 1 and self.trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError("this datamodule's batch sampler shards batches across processes itself: build the "
                             "Trainer with use_distributed_sampler=False (--trainer.use_distributed_sampler false)")
        return self.trainer.global_rank, self.trainer.world_size

    def check_same_data(self, key: str) -> None:
        """Refuse a distributed run whose ranks read different data: `key` (a digest of the files) must be
        rank 0's on every rank."""
        if self.trainer is None or self.trainer.world_size == 1:
            return
        reference = self.trainer.strategy.broadcast(key, src=0)
        if reference != key:
            raise ValueError(f"rank {self.trainer.global_rank} reads different data than rank 0 (data key {key} vs "
                             f"{reference}): every process must see the same data files")

    def state_dict(self) -> dict:
        """Position in the epoch's batch order, saved in every checkpoint."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        # The epoch of the batches consumed so far: after an epoch ends (and before the next
        # begins) `trainer.current_epoch` already names the next one.
        sampler = self._train_sampler
        epoch = sampler.sampler.epoch if sampler is not None else self.trainer.current_epoch
        return {"epoch": epoch, "batches_done": progress.processed}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume = dict(state_dict)
