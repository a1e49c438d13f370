"""CoNLL-2003 reading: original 4-column files, 2-column files, `datasets` records; IOB1 -> IOB2.

The original English files tag with IOB1 (an entity starts with I-, B- only separates two
adjacent entities of one type); everything downstream uses IOB2 (every entity starts with
B-). The scheme of each input is detected and reported; a file that uses both conventions
is refused rather than silently converted into something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DOCSTART = "-DOCSTART-"
TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class Sentence:
    """Words with their tags; `source` ('file:line' of its first word) is for error messages.

    `document` numbers the -DOCSTART- documents of a file (0 when it has none): neighbouring
    sentences of the same document are the tagger's optional context.
    """

    tokens: list[str]
    tags: list[str]
    source: str = ""
    document: int = 0


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL file: `token ... tag` columns, blank lines and -DOCSTART- as breaks.

    Every line of a file must have the same number of columns (at least 2; the token is the
    first, the NER tag the last); otherwise, or for a tag that is not O/B-X/I-X, raise
    ValueError naming file and line.
    """
    path = Path(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start, columns, document = 0, None, 0

    def flush() -> None:
        if tokens:
            sentences.append(Sentence(tokens.copy(), tags.copy(), f"{path}:{start}", document))
            tokens.clear()
            tags.clear()

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0] == DOCSTART:
                flush()
                if fields and sentences:
                    document += 1
                continue
            if columns is None:
                columns = len(fields)
            if len(fields) < 2 or len(fields) != columns:
                raise ValueError(f"{path}:{lineno}: malformed line {line.rstrip()!r}: expected {columns} "
                                 "whitespace-separated columns (token ... NER tag)")
            if not TAG_RE.match(fields[-1]):
                raise ValueError(f"{path}:{lineno}: tag {fields[-1]!r} is not O, B-<type> or I-<type>")
            if not tokens:
                start = lineno
            tokens.append(fields[0])
            tags.append(fields[-1])
    flush()
    return sentences


def from_records(records: Iterable[dict], names: list[str] | None, source: str = "records") -> list[Sentence]:
    """Sentences from the `datasets` conll2003 layout: `tokens` and `ner_tags`, integer ids into `names` (the
    ClassLabel names) or, with `names` None, the tag strings themselves."""
    sentences = []
    for i, record in enumerate(records):
        tokens, ids = list(record["tokens"]), list(record["ner_tags"])
        if len(tokens) != len(ids):
            raise ValueError(f"{source}[{i}]: {len(tokens)} tokens but {len(ids)} ner_tags")
        if names is None:
            bad = [t for t in ids if not isinstance(t, str) or not TAG_RE.match(t)]
            if bad:
                raise ValueError(f"{source}[{i}]: tags {bad[:3]} are neither O, B-X nor I-X (integer ner_tags need "
                                 "tag names: a ClassLabel feature or data.tag_names)")
            tags = ids
        else:
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < len(names)]
            if bad:
                raise ValueError(f"{source}[{i}]: tag ids {bad} outside the {len(names)} names")
            tags = [names[t] for t in ids]
        if tokens:
            sentences.append(Sentence(tokens, tags, f"{source}[{i}]"))
    return sentences


def _chunk_openings(tags: list[str]) -> Iterable[tuple[int, str]]:
    """(index, prefix) of every tag that opens a chunk, i.e. does not continue its predecessor's type."""
    prev = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and (prev == "O" or prev[2:] != tag[2:]):
            yield i, tag[0]
        prev = tag


def detect_scheme(sentences: list[Sentence]) -> str:
    """'IOB1' if some chunk opens with I-, 'IOB2' otherwise; ValueError if both conventions occur.

    A chunk opening with B- after O or another type is IOB2 behaviour (IOB1 uses B- only
    right after the same type); a chunk opening with I- is IOB1 behaviour.
    """
    first: dict[str, str] = {}
    for s in sentences:
        for i, prefix in _chunk_openings(s.tags):
            first.setdefault({"I": "IOB1", "B": "IOB2"}[prefix], f"{s.source} word {i + 1} ({s.tags[i]})")
    if len(first) == 2:
        raise ValueError(f"label scheme mix: IOB1 chunk openings (first at {first['IOB1']}) and IOB2 ones "
                         f"(first at {first['IOB2']}); fix the data to one scheme")
    return "IOB1" if "IOB1" in first else "IOB2"


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Turn every I- that opens a chunk into B-; valid IOB2 input comes back unchanged."""
    out = list(tags)
    for i, prefix in _chunk_openings(tags):
        if prefix == "I":
            out[i] = "B" + tags[i][1:]
    return out


def to_iob2(sentences: list[Sentence]) -> tuple[list[Sentence], str]:
    """The sentences in IOB2 and the scheme detected in the input."""
    scheme = detect_scheme(sentences)
    return [Sentence(s.tokens, iob1_to_iob2(s.tags), s.source, s.document) for s in sentences], scheme


def entity_types(sentences: list[Sentence]) -> list[str]:
    """Sorted entity types (PER, ORG, ...) occurring in the tags."""
    return sorted({t[2:] for s in sentences for t in s.tags if t != "O"})


def label_list(sentences: list[Sentence]) -> list[str]:
    """'O' then B-/I- of every type, sorted by type: the label ids of a tagger."""
    return ["O"] + [f"{p}-{t}" for t in entity_types(sentences) for p in "BI"]
