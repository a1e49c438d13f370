"""CoNLL reading, IOB1 -> IOB2, seed-001 label alignment, windows, casing, data module errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.data_dir import REPO_ROOT
from core.hf_import import default_checkpoint_dir, load_tokenizer
from ner.align import (
    IGNORE,
    SentenceEncoder,
    align_labels,
    casing_id,
    continuation_labels,
    document_context,
    windows,
)
from ner.conll import (
    Sentence,
    detect_scheme,
    entity_types,
    from_records,
    iob1_to_iob2,
    label_list,
    read_conll,
    to_iob2,
)
from ner.data import CoNLLDataModule

# Where CoNLLDataModule looks by default: $DATA_DIR, else ../shared/data beside the repo.
CONLL = Path(os.environ.get("DATA_DIR") or REPO_ROOT.parent / "shared" / "data") / "conll2003"
needs_data = pytest.mark.skipif(not CONLL.exists() and not os.environ.get("CI"),
                                reason=f"CoNLL-2003 not at {CONLL} (required under CI)")
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
ID = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_checkpoint_dir())


# --- seed 001 alignment -------------------------------------------------------------------

def test_alignment_seed_001_rules() -> None:
    # [CLS] Johan ##son rejects EU - wide [SEP]: words B-PER, O, B-ORG (the last split into 3)
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    words = [ID["B-PER"], ID["O"], ID["B-ORG"]]
    expected = [IGNORE, ID["B-PER"], ID["I-PER"], ID["O"], ID["B-ORG"], ID["I-ORG"], ID["I-ORG"], IGNORE]
    assert align_labels(word_ids, words, continuation_labels(LABELS)) == expected


def test_alignment_inside_and_outside_words_keep_their_label() -> None:
    word_ids = [None, 0, 0, 1, 1, 1, None]
    words = [ID["I-LOC"], ID["O"]]
    expected = [IGNORE, ID["I-LOC"], ID["I-LOC"], ID["O"], ID["O"], ID["O"], IGNORE]
    assert align_labels(word_ids, words, continuation_labels(LABELS)) == expected


def test_alignment_first_subtoken_only() -> None:
    word_ids = [None, 0, 0, 1, 2, 2, None]
    words = [ID["B-PER"], ID["O"], ID["B-MISC"]]
    expected = [IGNORE, ID["B-PER"], IGNORE, ID["O"], ID["B-MISC"], IGNORE, IGNORE]
    assert align_labels(word_ids, words, continuation_labels(LABELS), label_all_subtokens=False) == expected


def test_alignment_with_the_real_tokenizer(tokenizer) -> None:
    [example] = SentenceEncoder(tokenizer, LABELS, 128)(["Johanson", "rejects", "EU-wide"], 0,
                                                      ["B-PER", "O", "B-ORG"])
    assert [tokenizer.id_to_token(i) for i in example.input_ids] == [
        "[CLS]", "johan", "##son", "rejects", "eu", "-", "wide", "[SEP]"]
    assert example.word_ids == [None, 0, 0, 1, 2, 2, 2, None]
    assert example.labels == [IGNORE, 7, 8, 0, 5, 6, 6, IGNORE]


def test_unknown_tag_is_an_error(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"f.conll:7: tags \['B-DATE'\] are not among"):
        SentenceEncoder(tokenizer, LABELS, 128)(["May"], 0, ["B-DATE"], source="f.conll:7")


# --- windows ------------------------------------------------------------------------------

def test_windows_cover_every_word_once() -> None:
    assert windows([1, 2, 3, 1, 5, 1], 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert windows([7], 4) == [(0, 1)]  # an over-long word still gets a window
    assert windows([], 4) == []


def test_long_sentence_windows_keep_every_word(tokenizer) -> None:
    words = ("Peter Blackburn visited Brussels-Capital and Johansonville on 1996-08-22 " * 12).split()
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O", "O"] * 12
    examples = SentenceEncoder(tokenizer, LABELS, 24)(words, 3, tags)
    assert len(examples) > 1 and all(len(e.input_ids) <= 24 for e in examples)
    firsts = [(w, label) for e in examples
              for w, prev, label in zip(e.word_ids, [None] + e.word_ids[:-1], e.labels, strict=True)
              if w is not None and w != prev]
    assert [w for w, _ in firsts] == list(range(len(words)))
    assert [LABELS[label] for _, label in firsts] == tags
    assert all(e.sentence == 3 for e in examples)


def test_word_longer_than_the_window_is_cut_not_dropped(tokenizer) -> None:
    words = ["a", "Pneumonoultramicroscopicsilicovolcanoconiosis", "b"]
    examples = SentenceEncoder(tokenizer, LABELS, 6)(words, 0, ["O", "B-MISC", "O"])
    assert [sorted({w for w in e.word_ids if w is not None}) for e in examples] == [[0], [1], [2]]
    assert examples[1].labels[1] == ID["B-MISC"] and len(examples[1].input_ids) == 6


# --- casing -------------------------------------------------------------------------------

@pytest.mark.parametrize("word,kind", [("lamb", 0), ("EU", 1), ("German", 2), ("I", 2), ("McDonald", 3),
                                       ("1996-08-22", 4), ("4th", 0), (".", 5), ("--", 5)])
def test_casing_classes(word: str, kind: int) -> None:
    assert casing_id(word) == kind


# --- IOB1 -> IOB2 and reading -------------------------------------------------------------

def test_iob1_to_iob2_on_crafted_sentences() -> None:
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC"]) == ["B-PER", "I-PER", "O", "B-LOC"]
    # B- in IOB1 separates two adjacent entities of one type; a type change opens a new chunk.
    tags = ["I-LOC", "B-LOC", "I-LOC", "I-ORG", "I-LOC"]
    assert iob1_to_iob2(tags) == ["B-LOC", "B-LOC", "I-LOC", "B-ORG", "B-LOC"]
    valid_iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert iob1_to_iob2(valid_iob2) == valid_iob2


def test_scheme_detection_and_mix_error() -> None:
    iob1 = Sentence(["a", "b"], ["I-PER", "I-PER"], "x:1")
    iob2 = Sentence(["a", "b"], ["O", "B-PER"], "x:5")
    assert detect_scheme([iob1]) == "IOB1"
    assert detect_scheme([iob2]) == "IOB2"
    assert detect_scheme([Sentence(["a"], ["O"])]) == "IOB2"
    with pytest.raises(ValueError, match=r"label scheme mix.*x:1 word 1.*x:5 word 2"):
        detect_scheme([iob1, iob2])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_reader_four_and_two_columns(tmp_path: Path) -> None:
    four = write(tmp_path / "four", "-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\n"
                                    "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n\n")
    sentences = read_conll(four)
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert sentences[1].source == f"{four}:6"
    two = write(tmp_path / "two", "EU\tB-ORG\nrejects\tO\n-DOCSTART-\tO\nPeter\tB-PER\n")
    assert [s.tags for s in read_conll(two)] == [["B-ORG", "O"], ["B-PER"]]


def test_reader_datasets_layout() -> None:
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    records = [{"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}, {"tokens": [], "ner_tags": []}]
    [sentence] = from_records(records, names)
    assert sentence.tags == ["B-ORG", "O"]
    with pytest.raises(ValueError, match=r"records\[0\]: tag ids \[9\]"):
        from_records([{"tokens": ["x"], "ner_tags": [9]}], names)


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad", "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-MISC\n")
    with pytest.raises(ValueError, match=f"{bad}:3: malformed line"):
        read_conll(bad)
    bad_tag = write(tmp_path / "bad_tag", "EU NNP I-NP I-ORG\n\nrejects VBZ I-VP X-ORG\n")
    with pytest.raises(ValueError, match=f"{bad_tag}:3: tag 'X-ORG'"):
        read_conll(bad_tag)


@needs_data
def test_real_files_counts_types_and_scheme() -> None:
    counts = {}
    for name in ("eng.train", "eng.testa", "eng.testb"):
        sentences, scheme = to_iob2(read_conll(CONLL / name))
        assert scheme == "IOB1"
        assert entity_types(sentences) == ["LOC", "MISC", "ORG", "PER"]
        assert detect_scheme(sentences) == "IOB2"
        counts[name] = len(sentences)
    assert counts == {"eng.train": 14041, "eng.testa": 3250, "eng.testb": 3453}


# --- data module --------------------------------------------------------------------------

def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conll2003" / "eng.train", "EU B-ORG\n")
    assert CoNLLDataModule(dir=str(tmp_path)).data_dir == tmp_path / "conll2003"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert CoNLLDataModule().data_dir == tmp_path / "conll2003"
    with pytest.raises(FileNotFoundError, match=f"looked in: {tmp_path}/nowhere/conll2003"):
        CoNLLDataModule(dir=str(tmp_path / "nowhere"))


def small_corpus(root: Path, dev: str = "Peter B-PER\nsaid O\n") -> Path:
    train = "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nin O\nBonn B-LOC\n"
    for name, text in (("eng.train", train), ("eng.testa", dev), ("eng.testb", train)):
        write(root / "conll2003" / name, text)
    return root


def test_empty_split_and_unknown_dev_tag_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dev split .*eng.testa has no sentences"):
        CoNLLDataModule(dir=str(small_corpus(tmp_path / "a", dev="\n-DOCSTART- O\n\n"))).spec()
    dm = CoNLLDataModule(dir=str(small_corpus(tmp_path / "b", dev="Monday B-DATE\n")))
    assert dm.spec().labels == LABELS
    with pytest.raises(ValueError, match=r"eng.testa:1: tags \['B-DATE'\] are not among the model's labels"):
        dm.setup("fit")


def test_data_module_batches(tmp_path: Path) -> None:
    dm = CoNLLDataModule(dir=str(small_corpus(tmp_path)), batch_size=1)
    spec = dm.spec()
    assert spec.schemes == {"train": "IOB2", "dev": "IOB2", "test": "IOB2"}
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["word_ids"].tolist() == [[-1, 0, 1, -1]]
    assert batch["casing"].tolist() == [[5, 2, 0, 5]]
    assert [p.name for p in dm.data_files()] == ["eng.train", "eng.testa", "eng.testb"]


def test_label_list_is_o_then_b_i_per_type() -> None:
    assert label_list([Sentence(["a", "b"], ["B-PER", "I-LOC"])]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


# --- document context ---------------------------------------------------------------------

def test_reader_numbers_documents(tmp_path: Path) -> None:
    text = ("-DOCSTART- O\n\nEU B-ORG\n\nrejects O\n\n-DOCSTART- O\n\nPeter B-PER\n\n"
            "-DOCSTART- O\n\nBonn B-LOC\n")
    sentences, _ = to_iob2(read_conll(write(tmp_path / "docs", text)))
    assert [s.document for s in sentences] == [0, 0, 1, 2]


def test_document_context_stays_inside_the_document() -> None:
    sentences = [["a", "b"], ["c"], ["d", "e", "f"], ["g"]]
    documents = [0, 0, 0, 1]
    assert document_context(sentences, documents, 1, 10) == (["a", "b"], ["d", "e", "f"])
    assert document_context(sentences, documents, 2, 2) == (["b", "c"], [])
    assert document_context(sentences, documents, 3, 10) == ([], [])
    assert document_context(sentences, documents, 1, 0) == ([], [])


def test_context_tokens_are_unscored_and_leave_the_sentence_unchanged(tokenizer) -> None:
    words, tags = ["Peter", "Blackburn", "visited", "Brussels"], ["B-PER", "I-PER", "O", "B-LOC"]
    left, right = "The EU said on Monday .".split(), "JAPAN BEAT SYRIA 2-1 .".split()
    [plain] = SentenceEncoder(tokenizer, LABELS, 32)(words, 0, tags)
    [ctx] = SentenceEncoder(tokenizer, LABELS, 32, context_tokens=4)(words, 0, tags, "", left, right)
    scored = [i for i, w in enumerate(ctx.word_ids) if w is not None]
    # the sentence's sub-tokens, labels and casing are exactly those without context ...
    assert [ctx.input_ids[i] for i in scored] == plain.input_ids[1:-1]
    assert [ctx.labels[i] for i in scored] == plain.labels[1:-1]
    assert [ctx.casing[i] for i in scored] == plain.casing[1:-1]
    # ... flanked by the 4 nearest context sub-tokens per side, unlabelled, inside [CLS] ... [SEP]
    context = [i for i, w in enumerate(ctx.word_ids[1:-1], 1) if w is None]
    assert context == [1, 2, 3, 4] + list(range(scored[-1] + 1, scored[-1] + 5))
    assert all(ctx.labels[i] == IGNORE for i in context)
    assert [tokenizer.id_to_token(ctx.input_ids[i]) for i in context] == [
        "said", "on", "monday", ".", "japan", "beat", "syria", "2"]
    assert [ctx.casing[i] for i in context] == [casing_id(w) for w in ("said", "on", "Monday", ".", "JAPAN",
                                                                       "BEAT", "SYRIA", "2-1")]
    assert len(ctx.input_ids) == len(plain.input_ids) + 8


def test_context_never_exceeds_max_length(tokenizer) -> None:
    words = ("Peter Blackburn visited Brussels-Capital and Johansonville on 1996-08-22 " * 6).split()
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O", "O"] * 6
    left = right = "Some more words around here .".split() * 10
    examples = SentenceEncoder(tokenizer, LABELS, 24, context_tokens=8)(words, 0, tags, "", left, right)
    assert all(len(e.input_ids) <= 24 for e in examples)
    firsts = [w for e in examples for w, prev in zip(e.word_ids, [None] + e.word_ids[:-1], strict=True)
              if w is not None and w != prev]
    assert firsts == list(range(len(words)))  # every word scored exactly once


def test_data_module_context_uses_neighbouring_sentences(tmp_path: Path) -> None:
    dm = CoNLLDataModule(dir=str(small_corpus(tmp_path)), batch_size=1, context_tokens=8)
    assert dm.spec().context_tokens == 8
    dm.setup("fit")
    first, second = dm.examples["train"]
    assert [w for w in first.word_ids if w is not None] == [0, 1, 2]
    assert len(first.input_ids) == 2 + 3 + 3  # [CLS] EU rejects German + Peter in Bonn [SEP]
    assert len(second.input_ids) == 2 + 3 + 3
    with pytest.raises(ValueError, match="context_tokens must be >= 0"):
        CoNLLDataModule(dir=str(small_corpus(tmp_path)), context_tokens=-1)
