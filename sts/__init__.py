"""Sentence encoders: STS data, the encoder module, and the prune-then-distil pipeline (issue 6)."""
