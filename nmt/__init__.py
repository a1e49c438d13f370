"""Translation: parallel data, SentencePiece, transformer, search, BLEU."""
