"""Parallel corpora through Hugging Face `datasets`: Arrow tables, memory-mapped, tokenised once.

The in-memory path (`nmt.data.read_parallel`) holds every sentence and its ids as Python lists in every
process; at WMT size (4.5M pairs) that is gigabytes per rank, re-encoded at each start. Here a split is
an Arrow table on disk: `Dataset.map` (batched, `num_proc` workers) cleans and encodes it once into a cache
file keyed by the data files' contents and the SentencePiece model, and every later start and every DDP
rank memory-maps that file (shared pages, nothing re-encoded). Sources:

* `<split>.<lang>` text files (today's layout, read by the `text` builder);
* a Parquet / JSON(L) / Arrow file or a `save_to_disk` folder with one column per language (`en`, `de`)
  or a `translation` column of {lang: sentence} (the hub's WMT layout);
* a hub id + config (`wmt14`, `de-en`) for users online; never needed offline.

Cleaning matches the in-memory path exactly: sides stripped, pairs with a blank side dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from core.tables import hub_table, read_table
from nmt.vocab import Vocab


def load_table(source: Path | tuple[Path, Path], src_lang: str, tgt_lang: str, cache_dir: Path):
    """A `datasets.Dataset` with string columns `src` and `tgt` (not yet cleaned).

    `source` is a pair of aligned text files, a table file or a `save_to_disk` folder. Errors name the file
    and what it lacks: unaligned line counts, or the expected language columns."""
    import datasets

    datasets.disable_progress_bars()
    if isinstance(source, tuple):
        sides = []
        for path in source:
            if not path.is_file():
                raise FileNotFoundError(f"parallel data file not found: {path}")
            table = datasets.load_dataset("text", data_files=str(path), split="train", cache_dir=str(cache_dir))
            sides.append(table)
        if len(sides[0]) != len(sides[1]):
            raise ValueError(f"parallel files are not aligned: {source[0]} has {len(sides[0])} lines, "
                             f"{source[1]} has {len(sides[1])}")
        return datasets.concatenate_datasets(
            [sides[0].rename_column("text", "src"), sides[1].rename_column("text", "tgt")], axis=1)
    table = read_table(source, cache_dir)
    return language_columns(table, src_lang, tgt_lang, str(source))


def language_columns(table, src_lang: str, tgt_lang: str, where: str):
    """`table` reduced to columns `src`, `tgt` from `<lang>` columns or a `translation` {lang: text} column."""
    if "translation" in table.column_names and src_lang not in table.column_names:
        table = table.flatten()
        names = {f"translation.{src_lang}": "src", f"translation.{tgt_lang}": "tgt"}
    else:
        names = {src_lang: "src", tgt_lang: "tgt"}
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{where}: expected columns {src_lang!r} and {tgt_lang!r} (or a 'translation' column of "
                         f"{{{src_lang!r}: ..., {tgt_lang!r}: ...}}), found {table.column_names}")
    table = table.select_columns(list(names))
    return table.rename_columns(names)


def load_hub(name: str, config: str | None, split: str, src_lang: str, tgt_lang: str, cache_dir: Path):
    """A split of a hub dataset (online users), as `load_table` returns it; offline, one error saying how to
    point at local files instead."""
    table = hub_table(name, config, split, cache_dir,
                      "e.g. --data.files '{train: wmt14/train.parquet, val: ..., test: ...}'")
    return language_columns(table, src_lang, tgt_lang, f"hub dataset {name!r} ({config}) split {split!r}")


class TrainingSide:
    """One side of the cleaned training sentences SentencePiece trains on, streamed from the table on each
    iteration (never a list: at WMT size the sample's Python strings alone are most of a gigabyte): with `limit`,
    the first `limit` clean pairs (as the text path); else every pair, or every k-th row when there are more
    than `sample` (a whole corpus, not its first sources)."""

    def __init__(self, table, column: str, limit: int | None, sample: int) -> None:
        self.table, self.column, self.limit = table, column, limit
        self.stride = 1 if limit else max(1, -(-len(table) // sample))

    def __iter__(self) -> Iterator[str]:
        kept, chunk = 0, 10_000 * self.stride
        for start in range(0, len(self.table), chunk):
            rows = range(start, min(len(self.table), start + chunk), self.stride)
            batch = self.table.select(rows)[:] if self.stride > 1 else self.table[rows.start : rows.stop]
            for s, t in zip(batch["src"], batch["tgt"], strict=True):
                if s.strip() and t.strip():
                    yield (s if self.column == "src" else t).strip()
                    kept += 1
                    if kept == self.limit:
                        return


def training_text(table, limit: int | None, sample: int) -> tuple[TrainingSide, TrainingSide]:
    """The (source, target) training sentences SentencePiece trains on, as re-iterable streams."""
    return TrainingSide(table, "src", limit, sample), TrainingSide(table, "tgt", limit, sample)


class _Encode:
    """The batched `Dataset.map` function: strip, drop pairs with a blank side, encode both sides.

    Holds the model protos (picklable for `num_proc` workers); processors are built once per worker."""

    def __init__(self, vocab: Vocab) -> None:
        self.state, self._vocab = vocab.to_state(), None

    def __call__(self, batch: dict) -> dict:
        if self._vocab is None:
            self._vocab = Vocab.from_state(self.state)
        pairs = [(s.strip(), t.strip()) for s, t in zip(batch["src"], batch["tgt"], strict=True)
                 if s.strip() and t.strip()]
        src, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
        src_ids, tgt_ids = self._vocab.encode_src(src), self._vocab.encode_tgt(tgt)
        return {"src": src, "tgt": tgt, "src_ids": src_ids, "tgt_ids": tgt_ids,
                "src_len": [len(s) + 1 for s in src_ids], "tgt_len": [len(t) + 1 for t in tgt_ids]}

    def __getstate__(self) -> dict:
        return {"state": self.state, "_vocab": None}


def vocab_digest(vocab: Vocab) -> str:
    """Hash of the SentencePiece model(s): a cache made with another tokenizer is not reused."""
    digest = hashlib.blake2b(vocab.src_proto, digest_size=16)
    digest.update(vocab.tgt_proto or b"")
    return digest.hexdigest()


def encoded(load: Callable[[], object], vocab: Vocab, cache_file: Path, num_proc: int | None = None):
    """The split `load()` returns, cleaned and encoded (columns src, tgt, src_ids, tgt_ids, src_len, tgt_len):
    memory-mapped from the cache when its manifest exists (`load` is not called: a cached start reads neither the
    raw table nor any sentence), else built into `cache_file` (one shard per `num_proc` worker) and the manifest
    written last, so an interrupted build is rebuilt, not half reused."""
    import datasets

    manifest = cache_file.with_suffix(".files.json")
    if manifest.is_file():
        names = json.loads(manifest.read_text())
        shards = [datasets.Dataset.from_file(str(cache_file.parent / name)) for name in names]
        return shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({
        "src": datasets.Value("string"), "tgt": datasets.Value("string"),
        "src_ids": datasets.List(datasets.Value("int32")), "tgt_ids": datasets.List(datasets.Value("int32")),
        "src_len": datasets.Value("int32"), "tgt_len": datasets.Value("int32"),
    })
    table = load()
    result = table.map(_Encode(vocab), batched=True, batch_size=10_000, num_proc=num_proc, features=features,
                       remove_columns=table.column_names, cache_file_name=str(cache_file), desc="encode")
    names = [Path(f["filename"]).name for f in result.cache_files]
    with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, suffix=".tmp") as f:
        json.dump(names, f)
    os.replace(f.name, manifest)
    return result


class ArrowParallelSplit:
    """One encoded split on a memory-mapped Arrow table; the interface of `nmt.data.ParallelSplit`."""

    def __init__(self, name: str, table) -> None:
        self.name, self.table = name, table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) lengths in pieces + EOS, read from the Arrow columns."""
        # One batched read through Arrow (honouring a `select` index mapping); iterating a `datasets` Column
        # formats it row by row, minutes at WMT size.
        columns = self.table.select_columns(["src_len", "tgt_len"]).with_format("numpy")[:]
        return columns["src_len"].astype(np.int64), columns["tgt_len"].astype(np.int64)

    def rows(self, indices: Sequence[int]) -> tuple[list[list[int]], list[list[int]], list[str], list[str]]:
        """(source ids, target ids, source text, target text) of the rows `indices`."""
        batch = self.table[list(indices)]
        return batch["src_ids"], batch["tgt_ids"], batch["src"], batch["tgt"]

    def select(self, keep: np.ndarray) -> ArrowParallelSplit:
        """The split restricted to the rows `keep` (a length filter)."""
        return ArrowParallelSplit(self.name, self.table.select(keep))
