"""Block-aligned global ranking (`keep_per_layer`) and greedy whole-layer removal (`layers_to_drop`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sts import sentences, tiny_datamodule, tiny_module
from torch import Tensor, nn

from compression.ranking import keep_per_layer, layers_to_drop
from core.training import save_module_checkpoint
from sts.module import SentenceEncoderModule
from sts.pipeline import PipelineConfig, choose_layers, prune_by_taylor


def test_block_size_one_is_the_plain_global_ranking() -> None:
    scores = [torch.rand(10, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    kept = keep_per_layer(scores, 12)
    flat = sorted(((float(v), layer, j) for layer, s in enumerate(scores) for j, v in enumerate(s)), reverse=True)
    assert {(layer, j) for layer, row in enumerate(kept) for j in row} == {(layer, j) for _, layer, j in flat[:12]}


def test_blocks_keep_each_layers_best_units_in_multiples() -> None:
    scores = [torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3]),  # blocks of 2 by score: {0,2} 0.85, {4,5} 0.5, {1,3} 0.15
              torch.tensor([0.6, 0.05, 0.5, 0.04, 0.4, float("nan")])]  # {0,2} 0.55, {4,1} 0.225, {3} 0.04
    assert keep_per_layer(scores, 6, multiple=2) == [[0, 2, 4, 5], [0, 2]]
    assert keep_per_layer(scores, 7, multiple=2) == [[0, 2, 4, 5], [0, 2]]  # 7 leaves no room for another 2
    assert keep_per_layer(scores, 8, multiple=2) == [[0, 2, 4, 5], [0, 1, 2, 4]]
    assert keep_per_layer(scores, 9, multiple=2) == [[0, 2, 4, 5], [0, 1, 2, 4]]  # next block (2) does not fit
    assert keep_per_layer(scores, 11, multiple=2) == [list(range(6)), list(range(5))]  # with the last, smaller one
    assert keep_per_layer(scores, 4, multiple=2) == [[0, 2], [0, 2]]  # every layer keeps its best block
    with pytest.raises(ValueError, match="less than one block of 2 per layer"):
        keep_per_layer(scores, 3, multiple=2)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * x


class Stack(nn.Module):
    def __init__(self, factors: list[float]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Scale(f) for f in factors)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_layers_to_drop_removes_the_layers_the_loss_misses_least() -> None:
    model = Stack([1.0, 2.0, 1.1, 3.0])  # target x * 6: the two near-identity layers are the cheap ones
    batches = [torch.randn(4, 3) for _ in range(2)]
    loss = lambda x: ((model(x) - 6.0 * x) ** 2).mean()  # noqa: E731
    assert layers_to_drop(model, batches, loss, 1) == [2]  # without layer 2 the output is exactly 6x
    assert layers_to_drop(model, batches, loss, 2) == [0, 2]
    assert [m.factor for m in model.layers] == [1.0, 2.0, 1.1, 3.0]  # restored
    assert layers_to_drop(model, batches, loss, 0) == []
    with pytest.raises(ValueError, match=r"drop_layers must be in \[0, 4\)"):
        layers_to_drop(model, batches, loss, 4)


def test_pipeline_drops_a_layer_then_prunes_aligned_widths_of_the_original_counts(
        tokenizer_file: Path, tmp_path: Path) -> None:
    dm = tiny_datamodule(tokenizer_file, tmp_path, 16)
    sts = dm.hparams.sts_files["en"]
    cfg = PipelineConfig(train_files=dm.hparams.train_files, sts_files={"en": sts}, score_file=sts, score_pairs=16,
                         prune_heads=0.75, prune_ffn=0.75, drop_layers=1, head_multiple=2, ffn_multiple=8)
    teacher = tiny_module(tokenizer_file, data_spec=dm.spec())  # 2 layers x 4 heads, FFN 32
    kept = choose_layers(teacher, dm, cfg)
    assert len(kept) == 1 and len(teacher.bert.layers) == 2
    student = tiny_module(tokenizer_file, data_spec=dm.spec(), keep_layers=kept)
    shape = prune_by_taylor(student, dm, cfg, teacher.bert.cfg)
    assert shape == {"heads_per_layer": [2], "ffn_per_layer": [16]}  # a quarter of 8 heads and of 64 neurons
    save_module_checkpoint(student, tmp_path / "student.ckpt")  # the shallower, thinner student rebuilds alone
    reloaded = SentenceEncoderModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False).eval()
    probe = sentences(4, 5)
    torch.testing.assert_close(reloaded.encode(probe), student.encode(probe), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="less than one block of 8 per layer"):
        too_far = PipelineConfig(**{**cfg.__dict__, "drop_layers": 0, "prune_heads": 0.5, "prune_ffn": 0.9})
        prune_by_taylor(tiny_module(tokenizer_file, data_spec=dm.spec()), dm, too_far, teacher.bert.cfg)
