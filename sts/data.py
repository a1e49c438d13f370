"""STS-B files, unlabelled sentence files and the sentence-distillation DataModule.

STS files are CSV `sentence1,sentence2,score` without a header, score in [0, 5] (STS-B and its
translations), or tables with those columns read through `datasets`. Unlabelled sentences come from
any mix of: one-sentence-a-line text files, CoNLL files (`read_token_lines`) and STS CSVs (both
sentences of every row). A malformed line is one ValueError naming file and line.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader
from typing_extensions import override

from core.batching import LengthBatchSampler, ResumableDataModule
from core.data_dir import REPO_ROOT
from core.hf_import import default_checkpoint_dir, load_tokenizer
from core.tables import hub_table, is_table, read_table, require_columns

SCORE_RANGE = (0.0, 5.0)
HUB_PREFIX = "hub:"
HF_CACHE = REPO_ROOT / "cache" / "hf"


@dataclass(frozen=True)
class STSPair:
    """One scored sentence pair."""

    sentence1: str
    sentence2: str
    score: float


def read_sts(source: str | Path, cache_dir: Path = HF_CACHE) -> list[STSPair]:
    """The pairs of an STS set: a CSV (sentence1,sentence2,score), a Parquet / JSON(L) / Arrow file or
    `save_to_disk` folder with those columns, or `hub:<name>[:<config>]:<split>` (e.g.
    `hub:mteb/stsbenchmark-sts:test`, online users). Wrong column count or names, a bad or out-of-range score
    -> ValueError with file:line (or table[row])."""
    if str(source).startswith(HUB_PREFIX):
        parts = str(source)[len(HUB_PREFIX):].split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"{source!r}: expected hub:<name>[:<config>]:<split>, e.g. hub:mteb/stsbenchmark-sts:test")
        name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1]
        table = hub_table(name, config, split, cache_dir, "a local .csv or .parquet path")
        return _pairs_of_table(table, str(source))
    path = Path(source)
    if is_table(path):
        return _pairs_of_table(read_table(path, cache_dir), str(path))
    if not path.is_file():
        raise ValueError(f"STS file {str(path)!r} does not exist")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    out = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}:{number}"
        if len(row) != 3:
            raise ValueError(f"{where}: expected 3 columns (sentence1,sentence2,score), got {len(row)}")
        out.append(STSPair(row[0], row[1], _score(row[2], where)))
    if not out:
        raise ValueError(f"STS file {path} is empty")
    return out


def _score(value: object, where: str) -> float:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {value!r} is not a number") from None
    if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        raise ValueError(f"{where}: score {score} is outside {SCORE_RANGE[0]}-{SCORE_RANGE[1]}")
    return score


def _pairs_of_table(table, where: str) -> list[STSPair]:
    require_columns(table, ["sentence1", "sentence2", "score"], where)
    rows = table.select_columns(["sentence1", "sentence2", "score"])[:]
    out = [STSPair(a, b, _score(score, f"{where}[{i}]"))
           for i, (a, b, score) in enumerate(zip(rows["sentence1"], rows["sentence2"], rows["score"], strict=True))]
    if not out:
        raise ValueError(f"STS table {where} is empty")
    return out


def _is_conll(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    return first.startswith("-DOCSTART-") or len(first.split()) == 4 and first.split()[-1][:2] in ("O", "B-", "I-")


def read_token_lines(path: Path) -> list[str]:
    """Sentences of a token-per-line (CoNLL) file: the first column of each line joined by spaces, a blank
    line or `-DOCSTART-` ending a sentence. Tags are not read: this is unlabelled text."""
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if first and first != "-DOCSTART-":
            words.append(first)
        elif words:
            sentences.append(" ".join(words))
            words = []
    return sentences


def read_sentences(path: str | Path) -> list[str]:
    """Unlabelled sentences of a text file (one a line), a CoNLL file or an STS CSV (by content / suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sentence file {str(path)!r} does not exist")
    if path.suffix == ".csv":
        sentences = [s for pair in read_sts(path) for s in (pair.sentence1, pair.sentence2)]
    elif _is_conll(path):
        sentences = read_token_lines(path)
    else:
        sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError(f"sentence file {path} has no sentences (it is empty)")
    return sentences


def unique_sentences(files: list[str], limit: int | None = None, seed: int = 0) -> list[str]:
    """Distinct sentences of `files` in first-seen order; with `limit`, a seeded random subset of that size."""
    seen = dict.fromkeys(s for path in files for s in read_sentences(path))
    sentences = list(seen)
    if limit is not None and limit < len(sentences):
        sentences = random.Random(seed).sample(sentences, limit)
    return sentences


def tokenize(tokenizer: Tokenizer, sentences: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Padded `input_ids` / `attention_mask` (B, T) for `sentences`, each cut to `max_length` tokens."""
    encodings = tokenizer.encode_batch(sentences)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    ids = [e.ids[: max_length - 1] + [e.ids[-1]] if len(e.ids) > max_length else e.ids for e in encodings]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}



@dataclass(frozen=True)
class SentenceSpec:
    """What an encoder must agree with in the data: the tokenizer (None: the encoder's own folder), the
    maximum length in sub-tokens and the STS languages of the validation dataloaders, in order."""

    tokenizer: str | None = None
    max_length: int = 128
    languages: list[str] = field(default_factory=list)

class SentenceDataModule(ResumableDataModule):
    """Training: indexed unlabelled sentences (or parallel pairs); validation: one STS file per language.

    `train_files` are sentence files (`read_sentences`), deduplicated and, with `max_sentences`,
    sub-sampled; `parallel_files` [[source, target], ...] add aligned pairs for the seed's
    parallel loss (target sentences are only fed to the student). A training batch is
    {"index", "input_ids", "attention_mask"} (+ "target_input_ids", "target_attention_mask");
    batches group sentences of similar token length (little padding) in a shuffled order, and
    a resumed run continues at the checkpointed position (`ResumableDataModule`).
    `sts_files` {language: csv, table or hub:name:split (`read_sts`)} are the validation sets, one
    dataloader each.
    """

    def __init__(
        self, train_files: list[str] | None = None, sts_files: dict[str, str] | None = None,
        parallel_files: list[list[str]] | None = None, tokenizer: str | None = None, max_sentences: int | None = None,
        max_length: int = 128, batch_size: int = 64, eval_batch_size: int = 128, seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer_path = tokenizer or str(default_checkpoint_dir())
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.sentences = unique_sentences(train_files or [], max_sentences, seed) if train_files else []
        self.targets: list[str | None] = [None] * len(self.sentences)
        for pair in parallel_files or []:
            if len(pair) != 2:
                raise ValueError(f"parallel_files entries must be [source, target], got {pair}")
            src, tgt = (Path(p).read_text(encoding="utf-8").splitlines() for p in pair)
            if len(src) != len(tgt):
                raise ValueError(f"parallel files {pair} have {len(src)} and {len(tgt)} lines")
            self.sentences += src
            self.targets += tgt
        self.sts = {lang: read_sts(path) for lang, path in (sts_files or {}).items()}

    def spec(self) -> SentenceSpec:
        """What the module must agree with: the tokenizer and the STS languages."""
        return SentenceSpec(tokenizer=str(self.tokenizer_path), max_length=self.hparams.max_length,
                            languages=list(self.sts))

    def data_files(self) -> list[Path]:
        """Every file read, for the run record."""
        files = list(self.hparams.train_files or []) + [
            p for p in (self.hparams.sts_files or {}).values() if not str(p).startswith(HUB_PREFIX)]
        return [Path(p) for p in files + [p for pair in self.hparams.parallel_files or [] for p in pair]]

    def _collate_train(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = tokenize(self.tokenizer, [self.sentences[i] for i in indices], self.hparams.max_length)
        batch["index"] = torch.tensor(indices)
        targets = [self.targets[i] for i in indices]
        if all(t is not None for t in targets):
            target = tokenize(self.tokenizer, targets, self.hparams.max_length)  # type: ignore[arg-type]
            batch["target_input_ids"], batch["target_attention_mask"] = target["input_ids"], target["attention_mask"]
        return batch

    @override
    def train_dataloader(self) -> DataLoader:
        if not self.sentences:
            raise ValueError("SentenceDataModule has no training sentences: set train_files or parallel_files")
        lengths = [min(len(e.ids), self.hparams.max_length) for e in self.tokenizer.encode_batch(self.sentences)]
        rank, world = self.shard()
        sampler = LengthBatchSampler(lengths, batch_size=self.hparams.batch_size, shuffle=True,
                                     seed=self.hparams.seed, rank=rank, num_replicas=world)
        return self.make_loader(range(len(self.sentences)), sampler, self._collate_train, train=True)

    @override
    def val_dataloader(self) -> list[DataLoader]:
        return [self.sts_loader(pairs) for pairs in self.sts.values()]

    def sts_loader(self, pairs: list[STSPair]) -> DataLoader:
        """Batches {"a": ids/mask of sentence1, "b": of sentence2, "score"} in file order; under DDP each
        process takes every world-size-th pair."""
        rank, world = self.shard()
        # Equal "lengths": the sampler's stable sort keeps file order (one process sees the batches it always did).
        sampler = LengthBatchSampler([0] * len(pairs), batch_size=self.hparams.eval_batch_size, rank=rank,
                                     num_replicas=world, even_ranks=False)
        return DataLoader(pairs, batch_sampler=sampler,
                          collate_fn=partial(collate_pairs, self.tokenizer, max_length=self.hparams.max_length))


def collate_pairs(tokenizer: Tokenizer, rows: list[STSPair], max_length: int) -> dict:
    """One STS batch: {"a": ids/mask of the first sentences, "b": of the second, "score"}."""
    return {"a": tokenize(tokenizer, [r.sentence1 for r in rows], max_length),
            "b": tokenize(tokenizer, [r.sentence2 for r in rows], max_length),
            "score": torch.tensor([r.score for r in rows])}
