"""Named-entity recognition: CoNLL-2003 data, label alignment, BERT tagger, predict command."""
