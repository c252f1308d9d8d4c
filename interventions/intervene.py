"""Gradual interventions I_x = intervene(images, x), x in [0, 1]: x = 0 leaves the property as is, x = 1 = full edit.

Protocol: any callable `intervene(images, x) -> images` with images (B, 3, H, W) in [0, 1] and x a float, a 0-d tensor
or a (B,) tensor (one realisation per image). Built-ins bind their per-image masks at construction, so they expect the
same batch (same B, same order) at every call. They are smooth in x (up to clamping), so forward-mode autograd through
x works for them (poster section 3).

CueStrength ignores the content of `images` (only shape, device and dtype are used): I_x = base (1 - x m) + x m c with
base the cue-free (8-bit) render, m the cue mask, c the cue colour: the datamodule's blend, equal to
`dataset.render(i, cue_strength=x)` up to its 8-bit rounding (at most 1/255), and smooth in x.

Precomputed sequences (load_sequences): `.npz` with array `frames` (B, N, 3, H, W), float in [0, 1] or uint8, and
optional `x` (N,); `.pt` holding that tensor or a dict {"frames": ..., "x": ...} (loaded with weights_only=True); or a
folder with one sub-folder per image, each holding its N frames as image files in name order (all the same count and
size), or the N frames directly in the folder (B = 1), with an optional `x.txt` (one value per line) for the grid.
Default grid: N equidistant x in [0, 1]. I_x interpolates linearly between the two frames whose grid values enclose x
(exact on the grid, piecewise linear in x); the input images are ignored except for batch size, device and dtype;
`num_steps` = N so that the test evaluates the stored frames exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image


@runtime_checkable
class Intervention(Protocol):
    """A gradual intervention on one property: intervene(images, x) -> I_x (poster section 2, gradual interventions)."""

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor: ...


def _per_image(x: float | Tensor, images: Tensor) -> Tensor:
    """x as a (B, 1, 1, 1) tensor on the images' device and dtype (keeps autograd/jvp tangents)."""
    x = torch.as_tensor(x, dtype=images.dtype, device=images.device)
    if x.dim() > 1 or (x.dim() == 1 and x.shape[0] not in (1, images.shape[0])):
        raise ValueError(f"x must be a scalar or have shape ({images.shape[0]},), got {tuple(x.shape)}")
    return x.reshape(-1, 1, 1, 1).expand(images.shape[0], 1, 1, 1)


def _as_source(source: Tensor | tuple[float, float, float], like: Tensor) -> Tensor:
    """A colour (3,), a texture (3, H, W) or per-image textures (B, 3, H, W), broadcastable against (B, 3, H, W)."""
    source = torch.as_tensor(source, dtype=like.dtype, device=like.device)
    if source.dim() == 1:
        return source.view(1, 3, 1, 1)
    return source if source.dim() == 4 else source.unsqueeze(0)


class AlphaBlend:
    """Blend a colour/patch/texture into a masked region: I_x = I (1 - x m) + x m s (poster sec. 4, colourful patch)."""

    def __init__(self, mask: Tensor, source: Tensor | tuple[float, float, float]) -> None:
        self.mask = mask
        self.source = source

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor:
        alpha = _per_image(x, images) * self.mask.to(images.device, images.dtype)
        return images * (1 - alpha) + alpha * _as_source(self.source, images)


class BackgroundReplacement(AlphaBlend):
    """Fade the background (outside the foreground mask) into a new colour/texture (poster section 4, background)."""

    def __init__(self, foreground_mask: Tensor, background: Tensor | tuple[float, float, float]) -> None:
        super().__init__(~foreground_mask.bool(), background)


class Brightness:
    """Scale brightness in a mask: I_x = clamp(I (1 + x (factor - 1) m), 0, 1); factor 0 darkens to black (dark fur)."""

    def __init__(self, mask: Tensor, factor: float) -> None:
        self.mask = mask
        self.factor = factor

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor:
        scale = 1 + _per_image(x, images) * (self.factor - 1) * self.mask.to(images.device, images.dtype)
        return (images * scale).clamp(0, 1)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] to HSV with hue in [0, 1) (helper of the hue intervention)."""
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    chroma = value - images.min(1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.stack([(g - b) / safe, (b - r) / safe + 2, (r - g) / safe + 4], 1).gather(1, argmax[:, None])[:, 0]
    hue = torch.where(chroma > 0, torch.remainder(hue / 6, 1.0), torch.zeros_like(hue))
    safe_value = torch.where(value > 0, value, torch.ones_like(value))
    sat = torch.where(value > 0, chroma / safe_value, torch.zeros_like(value))
    return torch.stack([hue, sat, value], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """(B, 3, H, W) HSV (hue in [0, 1)) to RGB: channel n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6."""
    hue, sat, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6 * hue, 6)
    return value - value * sat * torch.minimum(k, 4 - k).clamp(0, 1)


class HueShift:
    """Rotate the hue inside a mask by x * shift turns (shift 0.5 = complementary colour), saturation and value kept."""

    def __init__(self, mask: Tensor, shift: float = 0.5) -> None:
        self.mask = mask
        self.shift = shift

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor:
        hsv = rgb_to_hsv(images)
        mask = self.mask.to(images.device, images.dtype)
        hue = torch.remainder(hsv[:, 0:1] + _per_image(x, images) * self.shift * mask, 1.0)
        shifted = hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))
        return torch.lerp(images, shifted, mask.expand_as(images))  # exactly the image outside the mask


class CueStrength:
    """The synthetic scenes' spurious cue at strength x: do(a := x) on the cue-free render (scenes' blend)."""

    def __init__(self, base: Tensor, cue_mask: Tensor, cue_color: Tensor | tuple[float, float, float]) -> None:
        self.base = base
        self.blend = AlphaBlend(cue_mask, cue_color)

    @classmethod
    def from_dataset(cls, dataset, indices: Tensor | list[int]) -> CueStrength:
        """Render items `indices` of a `datamodules.SyntheticScenes` without cue and take their cue masks and colour."""
        items = [dataset.render(int(i), cue_strength=0.0) for i in torch.as_tensor(indices).tolist()]
        base = torch.stack([item["image"] for item in items])
        cue_mask = torch.stack([item["cue_mask"] for item in items])
        return cls(base, cue_mask, torch.as_tensor(dataset.cue_color, dtype=torch.float32))

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor:
        if images.shape != self.base.shape:
            raise ValueError(f"images {tuple(images.shape)} do not match the cue-free renders {tuple(self.base.shape)}")
        return self.blend(self.base.to(images.device, images.dtype), x)


class PrecomputedSequence:
    """Sequences made elsewhere (e.g. a diffusion editor, poster section 2): frames (B, N, 3, H, W) at increasing x."""

    def __init__(self, frames: Tensor, x: Tensor | None = None) -> None:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must have shape (B, N, 3, H, W), got {tuple(frames.shape)}")
        self.frames = frames
        self.x = torch.linspace(0, 1, frames.shape[1]) if x is None else torch.as_tensor(x, dtype=torch.float32)
        if self.x.shape != (frames.shape[1],):
            raise ValueError(f"{self.x.numel()} x values for {frames.shape[1]} frames per image; give one x per frame")
        if frames.shape[1] < 2 or not bool((self.x.diff() > 0).all()):
            raise ValueError("a sequence needs N >= 2 frames with strictly increasing x values")
        self.num_steps = frames.shape[1]

    def __call__(self, images: Tensor, x: float | Tensor) -> Tensor:
        if images.shape[0] != self.frames.shape[0]:
            raise ValueError(f"{images.shape[0]} images but sequences for {self.frames.shape[0]}")
        xs = _per_image(x, images).reshape(-1)
        grid = self.x.to(images.device, images.dtype)
        left = (torch.searchsorted(grid, xs.detach().contiguous(), right=True) - 1).clamp(0, len(grid) - 2)
        w = ((xs - grid[left]) / (grid[left + 1] - grid[left])).view(-1, 1, 1, 1)
        rows = torch.arange(images.shape[0], device=images.device)
        frames = self.frames.to(images.device, images.dtype)
        return frames[rows, left] * (1 - w) + frames[rows, left + 1] * w


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _read_frames(folder: Path) -> Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} frames; a sequence needs at least 2")
    return torch.stack([decode_image(str(p), mode=ImageReadMode.RGB).float() / 255 for p in files])


def load_sequences(path: str | Path) -> PrecomputedSequence:
    """Load sequences (B, N, 3, H, W) from .npz, .pt or a folder of frames (poster section 2; format: module doc)."""
    path = Path(path)
    x = None
    if path.is_dir():
        subdirs = sorted(p for p in path.iterdir() if p.is_dir())
        frames = torch.stack([_read_frames(d) for d in subdirs]) if subdirs else _read_frames(path)[None]
        if (path / "x.txt").exists():
            x = torch.tensor(np.loadtxt(path / "x.txt", ndmin=1), dtype=torch.float32)
    elif path.suffix == ".npz":
        with np.load(path) as data:
            frames = torch.from_numpy(data["frames"])
            x = torch.from_numpy(data["x"]).float() if "x" in data else None
    elif path.suffix == ".pt":
        data = torch.load(path, weights_only=True, map_location="cpu")
        frames, x = (data["frames"], data.get("x")) if isinstance(data, dict) else (data, None)
    else:
        raise ValueError(f"unsupported sequence file {path}: use .npz, .pt or a folder of frames")
    frames = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
    return PrecomputedSequence(frames, x)
