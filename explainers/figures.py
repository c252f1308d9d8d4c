"""Pictures of explanations: the attribution map over the image with the extracted explanation, prediction curves
along an intervention, and `explanation_figure`, which draws whatever an `Explanation` holds for one image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from explainers.maps import to_pixel_map
from explainers.protocol import Explanation


def _finish(fig: Figure, axes: Any, title: str) -> Figure:
    """Image panels without ticks, the title above them."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


#: The title line of a figure whose explanation is degenerate (`explainers.metrics.degenerate`).
DEGENERATE_NOTE = "DEGENERATE: the fully masked image already gives this class; the size means nothing"


def overlay_figure(image: Tensor, pixel_map: Tensor, title: str, explanation: Tensor | None = None,
                   map_title: str = "attribution") -> Figure:
    """Panels: input image (3, H, W), the pixel map (H, W) over the greyed image, and (optionally) the image with
    everything outside the explanation mask (1, H, W) darkened."""
    panels = 3 if explanation is not None else 2
    fig = Figure(figsize=(2.6 * panels, 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    axes[0].imshow(image_to_array(image))
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(map_to_array(image, pixel_map))
    axes[1].set_title(map_title, fontsize=8)
    if explanation is not None:
        keep = explanation.detach().reshape(image.shape[-2:]).cpu().numpy().astype(bool)
        axes[2].imshow(explanation_to_array(image, explanation))
        axes[2].contour(keep, levels=[0.5], colors="yellow", linewidths=0.8)
        axes[2].set_title(f"explanation ({100 * keep.mean():.1f}% of image)", fontsize=8)
    return _finish(fig, axes, title)


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


def image_to_array(image: Tensor) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of an image (3, H, W) in [0, 1], for image loggers (wandb casts float arrays to
    uint8 without rescaling them, so a float image in [0, 1] would be logged black)."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def map_to_array(image: Tensor, pixel_map: Tensor) -> np.ndarray:
    """RGB uint8 array (H, W, 3): the pixel map (H, W) in jet colours (scaled to its own range) at 55 % over the
    greyed image (3, H, W); a NaN pixel shows the grey image alone. The middle panel of `overlay_figure`."""
    grey = image.detach().float().clamp(0, 1).mean(0).cpu().numpy()[..., None]
    heat = pixel_map.detach().float().cpu().numpy()
    lo, hi = np.nanmin(heat), np.nanmax(heat)
    colour = matplotlib.colormaps["jet"]((heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat))[..., :3]
    blend = np.where(np.isnan(heat)[..., None], grey, 0.45 * grey + 0.55 * colour)
    return (255 * blend).round().astype(np.uint8)


def explanation_to_array(image: Tensor, explanation: Tensor) -> np.ndarray:
    """RGB uint8 array (H, W, 3): the image (3, H, W) with everything outside the explanation mask darkened. The
    right panel of `overlay_figure`."""
    keep = explanation.detach().reshape(image.shape[-2:]).bool()
    return image_to_array(torch.where(keep, image.float(), 0.15 * image.float()))


def outline_array(picture: np.ndarray, mask: Tensor, colour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """Copy of an RGB uint8 picture (H, W, 3) with the boundary of a mask (H, W) (its pixels with a 4-neighbour
    outside it, or on the picture's edge) painted in `colour`: the outlined explanation of the report's cells."""
    keep = mask.detach().reshape(picture.shape[:2]).bool().cpu().numpy()
    inner = np.pad(keep, 1, constant_values=False)
    interior = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    out = picture.copy()
    out[keep & ~interior] = colour
    return out


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of a rendered figure, for image loggers."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def counterfactual_figure(image: Tensor, counterfactual: Tensor, region: Tensor | None, title: str) -> Figure:
    """Panels: the original (3, H, W), the region (1, H, W) outlined on it, the counterfactual, and |difference|."""
    img = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    cf = counterfactual.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    fig = Figure(figsize=(2.6 * 4, 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    axes[0].imshow(img)
    axes[0].set_title("original", fontsize=8)
    axes[1].imshow(img)
    if region is not None:
        keep = region.detach().reshape(img.shape[:2]).cpu().numpy().astype(bool)
        axes[1].contour(keep, levels=[0.5], colors="yellow", linewidths=0.8)
        axes[1].set_title(f"region ({100 * keep.mean():.1f}% of image)", fontsize=8)
    axes[2].imshow(cf)
    axes[2].set_title("counterfactual", fontsize=8)
    diff = np.abs(cf - img).sum(-1)
    axes[3].imshow(diff, cmap="magma", vmin=0, vmax=max(float(diff.max()), 1e-6))
    axes[3].set_title("|difference|", fontsize=8)
    return _finish(fig, axes, title)


def explanation_figure(image: Tensor, explanation: Explanation, i: int, title: str, method: str) -> Figure:
    """The picture of image `i` of an Explanation: the counterfactual with its region and difference, the prediction
    curve along an intervention with its frames under it, or the map (and extracted explanation) over the image."""
    e = explanation
    if e.counterfactual is not None:
        return counterfactual_figure(image, e.counterfactual[i], None if e.region is None else e.region[i], title)
    if e.curve is not None:
        frames = None if e.frames is None else e.frames[i]
        strip_x = None if frames is None else torch.linspace(0, 1, frames.shape[0])
        return plot_prediction_curve(e.x, e.curve[i], frames, strip_x, title=title)
    pixel = to_pixel_map(e.maps[i:i + 1], tuple(image.shape[-2:]))[0]
    return overlay_figure(image, pixel, title, None if e.explanation is None else e.explanation[i],
                          map_title=f"{method} map")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as a PNG at `path` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
