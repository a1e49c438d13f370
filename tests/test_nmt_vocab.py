"""nmt.vocab directly: joint and separate SentencePiece vocabularies, id spaces, round trips, the cache."""

from __future__ import annotations

import pytest

from nmt.vocab import BOS_ID, EOS_ID, NUM_SPECIALS, PAD_ID, UNK_ID, Vocab, build_vocab

EN = ["a man rides a bike", "two dogs play in the snow", "a woman reads a book", "the children run"] * 20
DE = ["ein mann fährt fahrrad", "zwei hunde spielen im schnee", "eine frau liest ein buch", "die kinder rennen"] * 20


def test_special_ids_are_fixed():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID, NUM_SPECIALS) == (0, 1, 2, 3, 4)


def test_joint_vocabulary_round_trips_target_text(tmp_path):
    vocab = build_vocab(EN, DE, 60, "unigram", joint=True, cache_dir=tmp_path)
    assert vocab.offset == 0 and vocab.size == vocab.src.get_piece_size()
    ids = vocab.encode_tgt(DE[:4])
    assert all(NUM_SPECIALS <= i < vocab.size for sent in ids for i in sent)
    assert vocab.decode_tgt([[BOS_ID, *s, EOS_ID, PAD_ID] for s in ids]) == DE[:4]  # specials dropped


def test_separate_vocabularies_share_one_id_space_without_overlap(tmp_path):
    vocab = build_vocab(EN, DE, 40, "bpe", joint=False, cache_dir=tmp_path)
    src_size = vocab.src.get_piece_size()
    assert vocab.offset == src_size - NUM_SPECIALS
    assert vocab.size == src_size + vocab.tgt.get_piece_size() - NUM_SPECIALS
    src_ids = {i for s in vocab.encode_src(EN) for i in s if i >= NUM_SPECIALS}
    tgt_ids = {i for s in vocab.encode_tgt(DE) for i in s if i >= NUM_SPECIALS}
    assert max(src_ids) < src_size <= min(tgt_ids) and max(tgt_ids) < vocab.size
    assert vocab.decode_tgt(vocab.encode_tgt(DE[:4])) == DE[:4]


def test_state_round_trip_and_cache_reuse(tmp_path):
    vocab = build_vocab(EN, DE, 40, "bpe", joint=False, cache_dir=tmp_path)
    again = Vocab.from_state(vocab.to_state())
    assert again.encode_tgt(DE) == vocab.encode_tgt(DE) and again.size == vocab.size
    assert len(list(tmp_path.glob("spm-*.json"))) == 1
    cached = build_vocab(EN, DE, 40, "bpe", joint=False, cache_dir=tmp_path)  # read, not retrained
    assert cached.to_state() == vocab.to_state() and len(list(tmp_path.glob("spm-*.json"))) == 1
    build_vocab(EN, DE, 44, "bpe", joint=False, cache_dir=tmp_path)  # other options: another file
    assert len(list(tmp_path.glob("spm-*.json"))) == 2


def test_bad_model_type_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.spm_model_type must be 'bpe' or 'unigram'"):
        build_vocab(EN, DE, 40, "word", joint=True, cache_dir=tmp_path)
