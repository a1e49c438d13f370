"""Shared transformer core: attention, layers, BERT encoder, HF checkpoint import."""
