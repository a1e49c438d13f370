"""Gate heatmap callback: TensorBoard image events and the GIF at fit end."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from compression.gates import attach_gates, attached_gates, detach_gates, l0_penalty
from compression.heatmap import GateHeatmap, render_heatmap
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer


def nmt_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, 23, (3, 6), generator=g)
    return torch.randint(4, 23, (3, 7), generator=g), tgt[:, :-1], tgt[:, 1:]


class _GatedNMT(L.LightningModule):
    """The smallest LightningModule owning an L0 penalty: tiny NMT + encoder/cross gates."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=23, d_model=16, num_heads=4, d_ff=24,
                                                      encoder_layers=2, decoder_layers=2, max_len=16))
        attach_gates(self.model, ["encoder_self", "decoder_cross"], init_log_alpha=0.5)

    def training_step(self, batch, batch_idx):
        src, tgt_in, tgt_out = batch
        logits = self.model(src, tgt_in)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=0)
        return ce + 0.1 * l0_penalty(attached_gates(self.model))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_gate_heatmap_callback_logs_images_and_writes_gif(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    batches = [nmt_batch(s) for s in range(3)]
    callback = GateHeatmap(every_n_steps=2)
    trainer = L.Trainer(
        max_epochs=2, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(_GatedNMT(), train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    # steps 1..6: every 2 steps -> 2, 4, 6; epoch ends at 3 and 6 (6 only once)
    assert len(callback.frames) == 4
    gif = Path(trainer.log_dir) / "gate_heatmap.gif"
    assert callback.gif_path == gif and gif.is_file()
    with Image.open(gif) as im:
        assert im.n_frames == 4
    acc = EventAccumulator(str(trainer.log_dir), size_guidance={"images": 0})
    acc.Reload()
    assert "gates/p_open" in acc.Tags()["images"]
    assert [e.step for e in acc.Images("gates/p_open")] == [2, 3, 4, 6]


def test_gate_heatmap_needs_gates_and_draws_pruned_layouts():
    module = _GatedNMT()
    detach_gates(module.model)
    with pytest.raises(ValueError, match="no head gates attached"):
        GateHeatmap().on_fit_start(None, module)
    with pytest.raises(ValueError, match="positive integer"):
        GateHeatmap(every_n_steps=0)
    image = render_heatmap({"encoder_self": torch.tensor([[0.2, float("nan")], [1.0, 0.0]])})
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
