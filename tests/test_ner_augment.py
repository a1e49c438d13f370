"""Entity-swap augmentation: pseudo-words replace entity words only, cased alike, tags kept, seeded."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_ner_data import small_corpus
from tokenizers import Tokenizer

from core.hf_import import default_checkpoint_dir, load_tokenizer
from ner.align import casing_id
from ner.augment import entity_swapped, pseudo_word, vocabulary_pieces
from ner.conll import Sentence
from ner.data import CoNLLDataModule

SENTENCES = [Sentence(["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
                      ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"], "t:1", 1),
             Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], "t:11", 1),
             Sentence(["no", "entity", "here"], ["O", "O", "O"], "t:14", 2)]


def test_pseudo_words_replace_entity_words_only_with_their_casing(tokenizer_file: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    copies = entity_swapped(SENTENCES, tokenizer, copies=2, seed=5)
    assert [c.source for c in copies] == ["t:1 (swap 1)", "t:11 (swap 1)", "t:1 (swap 2)", "t:11 (swap 2)"]
    assert len({c.document for c in copies} | {s.document for s in SENTENCES}) == 2 + len(copies)  # no context
    for copy in copies:
        original = next(s for s in SENTENCES if copy.source.startswith(s.source + " "))
        assert copy.tags == original.tags
        for new, old, tag in zip(copy.tokens, original.tokens, original.tags, strict=True):
            if tag == "O":
                assert new == old
            else:
                assert new != old and new.isalpha() and casing_id(new) == casing_id(old)
    assert entity_swapped(SENTENCES, tokenizer, 2, seed=5) == copies  # deterministic
    assert entity_swapped(SENTENCES, tokenizer, 2, seed=6) != copies
    assert entity_swapped(SENTENCES, tokenizer, 0, seed=5) == []
    with pytest.raises(ValueError, match="entity swap copies must be >= 0"):
        entity_swapped(SENTENCES, tokenizer, -1, seed=5)


def test_pseudo_words_come_from_vocabulary_pieces() -> None:
    tokenizer = load_tokenizer(default_checkpoint_dir())  # the packaged MiniLM's (uncased) WordPiece
    starts, continuations = vocabulary_pieces(tokenizer)
    assert "[CLS]" not in starts and "aachen" in starts and "ski" in continuations
    assert all(c.upper() != c.lower() for p in starts + continuations for c in p)  # no digits, CJK, subscripts
    rng = random.Random(0)
    for _ in range(50):
        word = pseudo_word("x", rng, starts, continuations)
        # it re-tokenises into word pieces that are in the vocabulary (no [UNK])
        assert "[UNK]" not in tokenizer.encode(word, add_special_tokens=False).tokens
    for _ in range(200):
        assert casing_id(pseudo_word("EU", rng, starts, continuations)) == casing_id("EU")
        assert casing_id(pseudo_word("Peter", rng, starts, continuations)) == casing_id("Peter")


def word_labels(example) -> list[int]:
    """The label of each word's first sub-token."""
    return [label for i, (label, w) in enumerate(zip(example.labels, example.word_ids, strict=True))
            if w is not None and (i == 0 or example.word_ids[i - 1] != w)]


def test_data_module_appends_swapped_copies_to_training_examples_only(tmp_path: Path) -> None:
    plain = CoNLLDataModule(dir=str(small_corpus(tmp_path)))
    plain.setup("fit")
    augmented = CoNLLDataModule(dir=str(small_corpus(tmp_path)), entity_swap_copies=3, seed=1)
    augmented.setup("fit")
    assert augmented.sentences == plain.sentences  # the files as read
    originals = len(plain.sentences["train"])
    assert augmented.examples["train"][:originals] == plain.examples["train"]
    copies = augmented.examples["train"][originals:]
    assert len(copies) == 3 * originals  # both training sentences have an entity
    assert {e.sentence for e in copies} == set(range(originals, 4 * originals))
    for copy, original in zip(copies, plain.examples["train"] * 3, strict=True):
        assert word_labels(copy) == word_labels(original)  # same tags, however the pseudo-words split
    assert augmented.examples["dev"] == plain.examples["dev"] and augmented.examples["test"] == plain.examples["test"]
    with pytest.raises(ValueError, match="entity_swap_copies must be >= 0"):
        CoNLLDataModule(dir=str(small_corpus(tmp_path)), entity_swap_copies=-1)
