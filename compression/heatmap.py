"""Gate heatmap callback: P(gate open) per layer x head, per attention type, over training.

Every epoch (and, optionally, every N optimizer steps) the openness of all attached
hard-concrete gates is drawn as one heatmap panel per attention type, logged as an image to
every TensorBoard logger, and kept as a frame; at fit end the frames become an animated GIF
in the run folder, showing heads being switched off as the L0 penalty acts.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from typing_extensions import override

from compression.gates import p_open_table


def render_heatmap(tables: dict[str, Tensor], title: str = "") -> np.ndarray:
    """One panel per attention type (rows = layers, columns = heads) as an (H, W, 3) uint8 image.

    Uses a bare Agg `Figure` rather than pyplot, so no global figure state or GUI backend is
    involved (safe inside a training process).
    """
    if not tables:
        raise ValueError("no gate tables to draw: attach gates first")
    fig = Figure(figsize=(3.2 * len(tables), 2.8), dpi=80)
    FigureCanvasAgg(fig)
    for i, (kind, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        data = np.ma.masked_invalid(table.numpy())  # NaN = head pruned away: drawn blank
        im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_xticks(range(table.shape[1]))
        ax.set_yticks(range(table.shape[0]))
        ax.tick_params(labelsize=7)
        if table.numel() <= 144:  # values are readable only on small grids
            for (r, c), v in np.ndenumerate(table.numpy()):
                if not math.isnan(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if v > 0.6 else "white")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class GateHeatmap(L.Callback):
    """Log P(open) heatmaps of the attached gates each epoch / every `every_n_steps`; GIF at fit end.

    `gif_name` is written into the logger's run folder (`trainer.log_dir`, else the default
    root dir). Frames live in memory only, so a resumed run's GIF starts at the resume point.
    """

    def __init__(self, every_n_steps: int | None = None, gif_name: str = "gate_heatmap.gif",
                 frame_ms: int = 500, tag: str = "gates/p_open") -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer or None, got {every_n_steps}")
        self.every_n_steps, self.gif_name, self.frame_ms, self.tag = every_n_steps, gif_name, frame_ms, tag
        self.frames: list[np.ndarray] = []
        self._last_step: int | None = None
        self.gif_path: Path | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not p_open_table(pl_module):
            raise ValueError("GateHeatmap: the module has no head gates attached "
                             "(compression.gates.attach_gates before fit)")
        self.frames, self._last_step = [], None

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:  # epoch end may coincide with step N
            return
        self._last_step = step
        image = render_heatmap(p_open_table(pl_module), f"P(open), epoch {trainer.current_epoch} step {step}")
        self.frames.append(image)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
                experiment.add_image(self.tag, image, step, dataformats="HWC")

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._snapshot(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.frames:
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(f) for f in self.frames]
        self.gif_path = folder / self.gif_name
        images[0].save(self.gif_path, save_all=True, append_images=images[1:], duration=self.frame_ms, loop=0)
