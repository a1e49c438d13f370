"""Model compression.

Attention heads: `compression.heads` (find attentions by type), `compression.gates`
(hard-concrete L0 gates), `compression.importance` (Taylor / random head scores),
`compression.prune` (physical head removal, head configs for checkpoints) and
`compression.heatmap` (callback drawing gate openness per layer x head, TensorBoard + GIF).

Deliberately no re-exports here: several modules of this package are developed side by
side, and importing one of them must not depend on (or pay for) the others.
"""
