"""Pictures of an explanation: the image, the attribution map over it, and the extracted explanation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor


def overlay_figure(image: Tensor, pixel_map: Tensor, title: str, explanation: Tensor | None = None,
                   map_title: str = "attribution") -> Figure:
    """Panels: input image (3, H, W), the pixel map (H, W) over the greyed image, and (optionally) the image with
    everything outside the explanation mask (1, H, W) darkened."""
    img = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    heat = pixel_map.detach().float().cpu().numpy()
    panels = 3 if explanation is not None else 2
    fig = Figure(figsize=(2.6 * panels, 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    axes[0].imshow(img)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
    lo, hi = np.nanmin(heat), np.nanmax(heat)
    axes[1].imshow(heat, cmap="jet", alpha=0.55, vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    axes[1].set_title(map_title, fontsize=8)
    if explanation is not None:
        keep = explanation.detach().reshape(img.shape[:2]).cpu().numpy().astype(bool)
        axes[2].imshow(np.where(keep[..., None], img, 0.15 * img))
        axes[2].contour(keep, levels=[0.5], colors="yellow", linewidths=0.8)
        axes[2].set_title(f"explanation ({100 * keep.mean():.1f}% of image)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_overlay(path: str | Path, image: Tensor, pixel_map: Tensor, title: str,
                 explanation: Tensor | None = None, map_title: str = "attribution") -> Path:
    """Write `overlay_figure` as a PNG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(image, pixel_map, title, explanation, map_title).savefig(path, dpi=100)
    return path


def figure_array(image: Tensor, pixel_map: Tensor, title: str, explanation: Tensor | None = None) -> np.ndarray:
    """`overlay_figure` rendered to an RGB uint8 array (H, W, 3), for image loggers such as W&B."""
    fig = overlay_figure(image, pixel_map, title, explanation)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

