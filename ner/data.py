"""CoNLL-2003 DataModule: files -> IOB2 sentences -> sub-token windows -> padded batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from core.batching import LengthBatchSampler, ResumableDataModule
from core.data_dir import REPO_ROOT, resolve_data_dir
from core.hf_import import default_checkpoint_dir, load_tokenizer
from core.tables import hub_table, is_table, read_table, require_columns
from ner.align import IGNORE, OTHER, Example, SentenceEncoder, document_context
from ner.augment import entity_swapped
from ner.conll import Sentence, from_records, label_list, read_conll, to_iob2


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of windows into tensors; `word_ids` is -1 at specials and padding."""
    width = max(len(e.input_ids) for e in examples)

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    return {
        "input_ids": pad([e.input_ids for e in examples], pad_id),
        "attention_mask": pad([[1] * len(e.input_ids) for e in examples], 0),
        "labels": pad([e.labels for e in examples], IGNORE),
        "casing": pad([e.casing for e in examples], OTHER),
        "word_ids": pad([[-1 if w is None else w for w in e.word_ids] for e in examples], -1),
        "sentence": torch.tensor([e.sentence for e in examples]),
    }


@dataclass(frozen=True)
class TaggingSpec:
    """What a tagger must agree with in the data: the IOB2 label list, the tokenizer (a checkpoint folder or
    tokenizer.json), the window length in sub-tokens, the document-context width and each split's source
    tag scheme (IOB1 / IOB2, informational)."""

    labels: list[str]
    tokenizer: str
    max_length: int = 512
    context_tokens: int = 0
    schemes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels or not self.tokenizer:
            raise ValueError("a tagger needs data_spec with 'labels' and 'tokenizer' (given by CoNLLDataModule.spec(); "
                             "train.py links it)")


class CoNLLDataModule(ResumableDataModule):
    """CoNLL-2003 (or any CoNLL-format NER data) tokenized for a BERT tagger.

    The label list is derived from the whole training file; dev and test tags outside it
    are an error. `max_sentences` / `max_eval_sentences` keep the first N sentences (smoke
    runs). `tokenizer` is a checkpoint folder or a tokenizer.json (None: the default
    checkpoint) and must match the model's vocabulary. `context_tokens` > 0 flanks every
    window with up to that many sub-tokens of the neighbouring sentences of its -DOCSTART-
    document on each side (document context, as in BERT's CoNLL setup); they are not scored.
    `entity_swap_copies` adds that many copies of every training sentence with an entity, each
    entity word a random pseudo-word (`ner.augment`; tags kept, seeded by `seed`);
    `sentences['train']` stays the original file, the copies follow it in `examples['train']`
    (their `sentence` index is past the last original sentence).

    Instead of CoNLL files, `files` {train, dev, test: path} reads Parquet / JSON(L) / Arrow files or
    `save_to_disk` folders in the `datasets` conll2003 layout (`tokens`, `ner_tags`: ClassLabel ids,
    ids named by `tag_names`, or tag strings), and `hub` (+ `hub_config`) a hub dataset for users
    online (e.g. `conll2003`; its splits train / validation / test).
    """

    def __init__(
        self, dir: str | None = None, train_file: str = "eng.train", dev_file: str = "eng.testa",
        test_file: str = "eng.testb", tokenizer: str | None = None, max_length: int = 128,
        batch_size: int | None = 32, batch_tokens: int | None = None, label_all_subtokens: bool = True,
        max_sentences: int | None = None, max_eval_sentences: int | None = None, num_workers: int = 0,
        seed: int = 0, context_tokens: int = 0, entity_swap_copies: int = 0,
        files: dict[str, str] | None = None, hub: str | None = None, hub_config: str | None = None,
        tag_names: list[str] | None = None, cache_dir: str = str(REPO_ROOT / "cache" / "hf"),
    ) -> None:
        super().__init__()
        if files and sorted(files) != ["dev", "test", "train"]:
            raise ValueError(f"data.files must name exactly the splits ['dev', 'test', 'train'], got {sorted(files)}")
        self.hub, self.hub_config, self.tag_names, self.cache_dir = hub, hub_config, tag_names, Path(cache_dir)
        if files:
            self.paths = {s: Path(files[s]).expanduser() for s in ("train", "dev", "test")}
        elif hub:
            self.paths = {}
        else:
            self.data_dir = resolve_data_dir(dir, "conll2003")
            self.paths = {s: self.data_dir / f for s, f in (("train", train_file), ("dev", dev_file),
                                                             ("test", test_file))}
        self.tokenizer_source = str(Path(tokenizer).resolve()) if tokenizer else str(default_checkpoint_dir())
        self.max_length, self.label_all_subtokens = max_length, label_all_subtokens
        if context_tokens < 0:
            raise ValueError(f"context_tokens must be >= 0, got {context_tokens}")
        self.context_tokens = context_tokens
        if entity_swap_copies < 0:
            raise ValueError(f"entity_swap_copies must be >= 0, got {entity_swap_copies}")
        self.entity_swap_copies = entity_swap_copies
        self.batch_size, self.batch_tokens = (None if batch_tokens else batch_size), batch_tokens
        self.limits = {"train": max_sentences, "dev": max_eval_sentences, "test": max_eval_sentences}
        self.num_workers, self.seed = num_workers, seed
        self.sentences: dict[str, list[Sentence]] = {}
        self.schemes: dict[str, str] = {}
        self.examples: dict[str, list[Example]] = {}
        self.tokenizer: Tokenizer | None = None
        self.labels: list[str] = []

    def _read(self) -> None:
        """Read and convert all splits once (cheap: under a second for CoNLL-2003)."""
        if self.sentences:
            return
        for split in ("train", "dev", "test"):
            where, raw = self._read_split(split)
            sentences, self.schemes[split] = to_iob2(raw)
            if not sentences:
                raise ValueError(f"{split} split {where} has no sentences")
            converted = " (converted to IOB2)" if self.schemes[split] == "IOB1" else ""
            rank_zero_info(f"{split}: {where}, {len(sentences):,} sentences, {self.schemes[split]}{converted}")
            self.sentences[split] = sentences
        self.labels = label_list(self.sentences["train"])
        for split in self.paths:
            self.sentences[split] = self.sentences[split][: self.limits[split]]

    def _read_split(self, split: str) -> tuple[str, list[Sentence]]:
        """(where it came from, its sentences) from a CoNLL file, a table or the hub."""
        if self.hub:
            hub_split = {"dev": "validation"}.get(split, split)
            table = hub_table(self.hub, self.hub_config, hub_split, self.cache_dir,
                              "--data.files '{train: train.parquet, dev: ..., test: ...}'")
            where = f"hub dataset {self.hub!r} ({self.hub_config}) split {hub_split!r}"
        else:
            path = self.paths[split]
            if not is_table(path):
                if not path.is_file():
                    raise FileNotFoundError(f"{split} split not found: {path}")
                return str(path), read_conll(path)
            table, where = read_table(path, self.cache_dir), str(path)
        require_columns(table, ["tokens", "ner_tags"], where)
        feature = getattr(table.features["ner_tags"], "feature", None)
        names = getattr(feature, "names", None) or self.tag_names
        return where, from_records(table.select_columns(["tokens", "ner_tags"]), names, where)

    def spec(self) -> TaggingSpec:
        """What the tagger must agree with: labels, tokenizer, window length, source schemes."""
        self._read()
        return TaggingSpec(labels=self.labels, tokenizer=self.tokenizer_source, max_length=self.max_length,
                           context_tokens=self.context_tokens, schemes=dict(self.schemes))

    def data_files(self) -> list[Path]:
        """The CoNLL files this run reads (fingerprinted into the run record)."""
        return list(self.paths.values())

    def setup(self, stage: str | None = None) -> None:
        """Tokenize every split into windows (once)."""
        self._read()
        if self.examples:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_source)
        encoder = SentenceEncoder(self.tokenizer, self.labels, self.max_length, self.label_all_subtokens,
                                  self.context_tokens)
        for split, sentences in self.sentences.items():
            if split == "train" and self.entity_swap_copies:
                swapped = entity_swapped(sentences, self.tokenizer, self.entity_swap_copies, self.seed)
                rank_zero_info(f"train: + {len(swapped):,} entity-swapped copies")
                sentences = sentences + swapped
            words, documents = [s.tokens for s in sentences], [s.document for s in sentences]
            self.examples[split] = [
                e for i, s in enumerate(sentences)
                for e in encoder(s.tokens, i, s.tags, s.source, *document_context(words, documents, i,
                                                                                  self.context_tokens))]

    def _loader(self, split: str) -> DataLoader:
        examples = self.examples[split]
        train = split == "train"
        rank, world = self.shard()
        sampler = LengthBatchSampler([len(e.input_ids) for e in examples], max_tokens=self.batch_tokens,
                                     batch_size=self.batch_size, shuffle=train, seed=self.seed, rank=rank,
                                     num_replicas=world, even_ranks=train)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        return self.make_loader(examples, sampler, partial(collate, pad_id=pad_id), train=train,
                                num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-bucketed training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Dev (eng.testa) batches, sorted by length."""
        return self._loader("dev")

    def test_dataloader(self) -> DataLoader:
        """Test (eng.testb) batches, sorted by length."""
        return self._loader("test")
