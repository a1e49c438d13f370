"""Model compression.

Attention heads: `compression.heads` (find attentions by type), `compression.gates`
(hard-concrete L0 gates), `compression.importance` (Taylor / random head scores) and
`compression.prune` (physical head removal, head configs for checkpoints).

Deliberately no re-exports here: several modules of this package are developed side by
side, and importing one of them must not depend on (or pay for) the others.
"""
