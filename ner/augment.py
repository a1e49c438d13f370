"""Entity-swap augmentation: training copies whose entity words are random pseudo-words.

Why: test sets are full of names the training data never shows, and a tagger whose word
embedding was compressed (a rank-64 SVD) has lost much of what its pretrained rows knew about
rare tokens; it is the PER and ORG scores that drop. In a copy of a sentence whose every entity
word is replaced by a pseudo-word built from random vocabulary pieces (its capitalisation kept,
its tags kept), the tagger must read the context and casing, and the rows of tokens the original
data never uses receive gradient; with a teacher the copy is a free extra distillation example
(augmented transfer data as in TinyBERT; mention replacement as in Dai & Adel 2020).
"""

from __future__ import annotations

import random
from dataclasses import replace

from tokenizers import Tokenizer

from ner.conll import Sentence

MAX_EXTRA_PIECES = 2  # a pseudo-word is one word-initial piece and up to this many continuations


def _cased_letters(text: str) -> bool:
    """Only letters of scripts with upper and lower case (Latin, Cyrillic, Greek, ...): pieces that can
    be cased like the word they replace (not digits, punctuation, CJK)."""
    return bool(text) and all(c.lower() != c.upper() for c in text)


def vocabulary_pieces(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """(word-initial pieces, continuation pieces without their '##') made of cased letters, sorted,
    so a seed gives the same pseudo-words on every machine."""
    starts, continuations = [], []
    for piece in tokenizer.get_vocab():
        if piece.startswith("##"):
            if _cased_letters(piece[2:]):
                continuations.append(piece[2:])
        elif _cased_letters(piece):
            starts.append(piece)
    if not starts or not continuations:
        raise ValueError("the tokenizer's vocabulary has no word pieces of cased letters to build pseudo-words from")
    return sorted(starts), sorted(continuations)


def pseudo_word(original: str, rng: random.Random, starts: list[str], continuations: list[str]) -> str:
    """A random word from vocabulary pieces, cased like `original` (UPPER, Title or lower)."""
    word = rng.choice(starts) + "".join(rng.choice(continuations) for _ in range(rng.randint(0, MAX_EXTRA_PIECES)))
    if len(original) > 1 and original.isupper():
        return word.upper()
    return word.capitalize() if original[:1].isupper() else word.lower()


def entity_swapped(sentences: list[Sentence], tokenizer: Tokenizer, copies: int, seed: int) -> list[Sentence]:
    """`copies` augmented copies of every sentence with an entity, each entity word (tag not 'O')
    replaced by a pseudo-word; tags unchanged, other words unchanged. Deterministic for a seed.
    Copies are documents of their own (no document context) and name their source as `... (swap k)`."""
    if copies < 0:
        raise ValueError(f"entity swap copies must be >= 0, got {copies}")
    if copies == 0:
        return []
    starts, continuations = vocabulary_pieces(tokenizer)
    rng = random.Random(seed)
    out = []
    for k in range(copies):
        for s in sentences:
            if all(tag == "O" for tag in s.tags):
                continue
            tokens = [w if tag == "O" else pseudo_word(w, rng, starts, continuations)
                      for w, tag in zip(s.tokens, s.tags, strict=True)]
            out.append(replace(s, tokens=tokens, source=f"{s.source} (swap {k + 1})", document=-1 - len(out)))
    return out
