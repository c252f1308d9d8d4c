"""Plots of prediction vs x with the intervention strip I_x under the curve (poster section 2-3 figures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from interventions.intervene import Intervention


@torch.no_grad()
def intervention_strip(
    images: Tensor, intervention: Intervention, index: int = 0, num_frames: int = 5
) -> tuple[Tensor, Tensor]:
    """Thumbnails I_x (T, 3, H, W) of image `index` at T equidistant x (T,), for the strip under the curve."""
    xs = torch.linspace(0, 1, num_frames)
    frames = torch.stack([intervention(images, float(v))[index] for v in xs])
    return frames.clamp(0, 1).cpu(), xs


def plot_prediction_curve(
    x: Tensor,
    curves: Tensor,
    strip: Tensor | None = None,
    strip_x: Tensor | None = None,
    labels: list[str] | None = None,
    title: str | None = None,
    ylabel: str = "p(predicted class)",
) -> Figure:
    """Prediction F(I_x) vs x for one curve (N,) or several (n, N), optionally with I_x thumbnails under it."""
    curves = curves.detach().float().cpu().reshape(-1, curves.shape[-1])
    x = x.detach().float().cpu()
    n_thumbs = 0 if strip is None else strip.shape[0]
    fig = Figure(figsize=(max(5.0, 1.3 * n_thumbs), 4.2 if n_thumbs else 3.2))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 if n_thumbs else 1, max(n_thumbs, 1), height_ratios=[2.2, 1] if n_thumbs else [1])
    ax = fig.add_subplot(grid[0, :])
    for i, curve in enumerate(curves):
        ax.plot(x.numpy(), curve.numpy(), label=None if labels is None else labels[i])
    ax.set_xlim(float(x[0]), float(x[-1]))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("x (property realisation)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if labels is not None:
        ax.legend(fontsize=7)
    for t in range(n_thumbs):
        thumb = fig.add_subplot(grid[1, t])
        thumb.imshow(strip[t].permute(1, 2, 0).float().cpu().numpy())
        thumb.set_xticks([])
        thumb.set_yticks([])
        if strip_x is not None:
            thumb.set_xlabel(f"x={float(strip_x[t]):.2f}", fontsize=7)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of a rendered figure, for image loggers."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_intervention_plot(
    path: str | Path,
    x: Tensor,
    curve: Tensor,
    images: Tensor,
    intervention: Intervention,
    index: int = 0,
    num_frames: int = 5,
    title: str | None = None,
) -> Path:
    """Write the PNG for image `index`: its prediction curve with the intervention strip under it."""
    strip, strip_x = intervention_strip(images, intervention, index, num_frames)
    fig = plot_prediction_curve(x, curve, strip, strip_x, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
