"""Word <-> sub-token alignment for tagging (seed 001), windows, casing features.

Training labels per sub-token: special tokens get -100 (ignored by the loss), the first
sub-token of a word gets the word's label, later sub-tokens get I-X when the word is B-X and
the word's label otherwise, or -100 with `label_all_subtokens=False`. Predictions always go
back to words through the first sub-token, so scores are word-level like conlleval.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

IGNORE = -100
# Casing classes of a word, fed to the optional casing embedding.
CASING = ("lower", "UPPER", "Title", "mixed", "digits", "other")
OTHER = CASING.index("other")


def casing_id(word: str) -> int:
    """Index into CASING: letters decide lower/UPPER/Title/mixed; no letters: digits or other."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return CASING.index("digits") if any(c.isdigit() for c in word) else OTHER
    if all(c.islower() for c in letters):
        return CASING.index("lower")
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return CASING.index("Title")  # also a single capital letter ("I", "A")
    if all(c.isupper() for c in letters):
        return CASING.index("UPPER")
    return CASING.index("mixed")


def continuation_labels(labels: list[str]) -> list[int]:
    """For every label id, the id a later sub-token of such a word gets: I-X for B-X, else itself."""
    index = {label: i for i, label in enumerate(labels)}
    return [index.get("I" + label[1:], i) if label.startswith("B-") else i for i, label in enumerate(labels)]


def align_labels(
    word_ids: list[int | None], word_labels: list[int], continuation: list[int],
    label_all_subtokens: bool = True,
) -> list[int]:
    """Sub-token labels from word labels and the tokenizer's `word_ids` (None = special token)."""
    out, prev = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != prev:
            out.append(word_labels[w])
        else:
            out.append(continuation[word_labels[w]] if label_all_subtokens else IGNORE)
        prev = w
    return out


def word_predictions(word_ids: list[int | None], token_preds: list[int]) -> dict[int, int]:
    """{word id: prediction of its first sub-token}."""
    out: dict[int, int] = {}
    for w, p in zip(word_ids, token_preds, strict=True):
        if w is not None and w not in out:
            out[w] = p
    return out


def windows(subtokens_per_word: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive word ranges [start, end) whose sub-tokens fit in `budget`; every word is in one.

    A single word longer than the budget gets a window of its own (the encoder cuts its
    sub-tokens to the budget; the first one, which carries the word's label, survives).
    """
    if budget < 1:
        raise ValueError(f"window budget must be >= 1 sub-token, got {budget}")
    spans, start, used = [], 0, 0
    for i, n in enumerate(subtokens_per_word):
        if used and used + n > budget:
            spans.append((start, i))
            start, used = i, 0
        used += n
    if start < len(subtokens_per_word):
        spans.append((start, len(subtokens_per_word)))
    return spans


@dataclass
class Example:
    """One model input: a window of a sentence."""

    sentence: int
    input_ids: list[int]
    word_ids: list[int | None]  # word index in the whole sentence, None for specials
    labels: list[int]  # IGNORE where no loss; all IGNORE when the sentence has no gold tags
    casing: list[int]


def special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a single sequence ([CLS], [SEP])."""
    enc = tokenizer.encode(["a"], is_pretokenized=True)
    first = enc.word_ids.index(0)
    last = len(enc.word_ids) - enc.word_ids[::-1].index(0)
    return enc.ids[:first], enc.ids[last:]


class SentenceEncoder:
    """Turns a sentence (words, optional IOB2 tags) into windows of at most `max_length` sub-tokens.

    With `context_tokens` > 0 each window is flanked by up to that many sub-tokens of the
    words around it (`left` / `right`: neighbouring sentences of the same document, then the
    sentence's own words outside the window), as far as `max_length` allows. Context
    sub-tokens have word id None and no label, so they inform the tags but are never scored.
    """

    def __init__(
        self, tokenizer: Tokenizer, labels: list[str], max_length: int, label_all_subtokens: bool = True,
        context_tokens: int = 0,
    ) -> None:
        self.tokenizer, self.labels, self.max_length = tokenizer, labels, max_length
        self.label_all_subtokens, self.context_tokens = label_all_subtokens, context_tokens
        self.label_ids = {label: i for i, label in enumerate(labels)}
        self.continuation = continuation_labels(labels)
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        self.unk = tokenizer.token_to_id("[UNK]")

    def tag_ids(self, tags: list[str], source: str = "") -> list[int]:
        """Label ids of `tags`; a tag the model was not trained with is an error."""
        unknown = sorted({t for t in tags if t not in self.label_ids})
        if unknown:
            raise ValueError(f"{source}: tags {unknown} are not among the model's labels {self.labels}")
        return [self.label_ids[t] for t in tags]

    def pieces(self, words: list[str]) -> list[list[int]]:
        """Sub-token ids of every word (at most the window budget; a word mapped to nothing becomes [UNK])."""
        if not words:
            return []
        enc = self.tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
        pieces: list[list[int]] = [[] for _ in words]
        for token_id, w in zip(enc.ids, enc.word_ids, strict=True):
            pieces[w].append(token_id)
        # A word the tokenizer maps to nothing (e.g. a lone control character) must not vanish.
        return [p[: self.budget] or [self.unk] for p in pieces]

    def _context(self, words: list[str], pieces: list[list[int]], room: int, before: bool) -> tuple[list, list]:
        """(ids, casing) of the `room` sub-tokens of `words` nearest the window."""
        ids = [t for p in pieces for t in p]
        casing = [casing_id(w) for w, p in zip(words, pieces, strict=True) for _ in p]
        if room <= 0:
            return [], []
        return (ids[-room:], casing[-room:]) if before else (ids[:room], casing[:room])

    def __call__(
        self, words: list[str], sentence: int = 0, tags: list[str] | None = None, source: str = "",
        left: list[str] | None = None, right: list[str] | None = None,
    ) -> list[Example]:
        """The windows of one sentence; labels are all IGNORE when `tags` is None."""
        word_labels = self.tag_ids(tags, source) if tags is not None else None
        pieces = self.pieces(words)
        use_context = self.context_tokens > 0
        left = list(left or []) if use_context else []
        right = list(right or []) if use_context else []
        left_pieces, right_pieces = self.pieces(left), self.pieces(right)
        examples = []
        for start, end in windows([len(p) for p in pieces], self.budget):
            ids, wids = list(self.prefix), [None] * len(self.prefix)
            casing = [OTHER] * len(self.prefix)
            inside = sum(len(pieces[w]) for w in range(start, end))
            room = min(self.context_tokens, (self.budget - inside) // 2)
            before_ids, before_casing = self._context(left + words[:start], left_pieces + pieces[:start], room, True)
            after_room = min(self.context_tokens, self.budget - inside - len(before_ids))
            after_ids, after_casing = self._context(words[end:] + right, pieces[end:] + right_pieces, after_room,
                                                    False)
            ids += before_ids
            wids += [None] * len(before_ids)
            casing += before_casing
            for w in range(start, end):
                ids += pieces[w]
                wids += [w] * len(pieces[w])
                casing += [casing_id(words[w])] * len(pieces[w])
            ids += after_ids + self.suffix
            wids += [None] * (len(after_ids) + len(self.suffix))
            casing += after_casing + [OTHER] * len(self.suffix)
            if word_labels is None:
                labels = [IGNORE] * len(ids)
            else:
                labels = align_labels(wids, word_labels, self.continuation, self.label_all_subtokens)
            examples.append(Example(sentence, ids, wids, labels, casing))
        return examples


def document_context(
    sentences: list[list[str]], documents: list[int], i: int, max_words: int
) -> tuple[list[str], list[str]]:
    """Up to `max_words` words before and after sentence `i`, from sentences of its document."""
    if max_words <= 0:
        return [], []
    left: list[str] = []
    j = i - 1
    while j >= 0 and documents[j] == documents[i] and len(left) < max_words:
        left = sentences[j] + left
        j -= 1
    right: list[str] = []
    j = i + 1
    while j < len(sentences) and documents[j] == documents[i] and len(right) < max_words:
        right += sentences[j]
        j += 1
    return left[-max_words:], right[:max_words]
