"""The masks RCSB's bridge trains on (the regions an RCSB call edits, "box:MARGIN" with room to draw a new shape
among them, are :func:`explainers.regions.make_region`'s).

* :func:`training_masks`: the inpainting masks the bridge trains on: free-form strokes over 10-20 % and 20-30 % of
  the image, a centre box, and attribution-shaped cell regions (top cells of a random smooth map, area 0.05-0.3).
* :func:`mask_bank`: a fixed set of such masks drawn once in loader workers (I2SB too trains on fixed sets of 10k
  free-form masks), so that training does not wait on mask drawing.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from explainers.regions import Size, _hw, cell_region

__all__ = [
    "MASK_FAMILIES",
    "box_mask",
    "freeform_mask",
    "mask_bank",
    "random_cell_mask",
    "training_masks",
]

#: The training mask families, drawn uniformly per image by :func:`training_masks`.
MASK_FAMILIES = ("freeform1020", "freeform2030", "center", "cells")


# --------------------------------------------------------------------------- training masks


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def box_mask(size: Size, fraction: float = 0.5) -> Tensor:
    """A centred box whose sides are ``fraction`` of the image's (I2SB's "center" mask: 128 x 128 at 256 px), (H, W) bool."""
    h, w = _hw(size)
    bh, bw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - bh) // 2, (w - bw) // 2
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top:top + bh, left:left + bw] = True
    return mask


def _stroke(h: int, w: int, generator: torch.Generator, shrink: float) -> Tensor:
    """One brush stroke: a polyline of 1-5 segments with a round brush, (H, W) bool."""
    side = min(h, w)
    n_seg = 1 + int(torch.randint(5, (), generator=generator, device=generator.device))
    width = max(1.0, _uniform(generator, 0.04, 0.12) * side * shrink)
    points = [(_uniform(generator, 0, h), _uniform(generator, 0, w))]
    angle = _uniform(generator, 0, 2 * math.pi)
    for _ in range(n_seg):
        angle += _uniform(generator, -math.pi / 2, math.pi / 2)
        length = max(1.0, _uniform(generator, 0.1, 0.35) * side * shrink)
        y, x = points[-1]
        y = min(max(y + length * math.sin(angle), 0.0), h - 1.0)
        x = min(max(x + length * math.cos(angle), 0.0), w - 1.0)
        points.append((y, x))
    p = torch.tensor(points, dtype=torch.float32)
    p0, d = p[:-1, :, None, None], (p[1:] - p[:-1])[:, :, None, None]  # (S, 2, 1, 1)
    centres = (torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5)
    yy, xx = torch.meshgrid(*centres, indexing="ij")
    grid = torch.stack([yy, xx])[None]  # (1, 2, H, W)
    t = (((grid - p0) * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True).clamp_min(1e-12)).clamp(0, 1)
    dist = (grid - p0 - t * d).norm(dim=1)  # (S, H, W): distance to each segment
    return (dist <= width / 2).any(0)


def freeform_mask(size: Size, low: float, high: float, generator: torch.Generator, max_strokes: int = 400) -> Tensor:
    """Free-form brush strokes covering a fraction of the image drawn uniformly in [low, high], (H, W) bool.

    Strokes are added until the drawn coverage is reached; a stroke that would overshoot ``high`` is redrawn
    smaller, so the coverage lands in [low, high] whenever [low, high] spans at least a pixel.
    """
    h, w = _hw(size)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    n = h * w
    goal = _uniform(generator, low, high)
    mask = torch.zeros(h, w, dtype=torch.bool)
    covered, shrink = 0, 1.0
    for _ in range(max_strokes):
        if covered >= goal * n:
            break
        new = mask | _stroke(h, w, generator, shrink)
        count = int(new.sum())
        if count > high * n:
            shrink *= 0.7
            continue
        mask, covered = new, count
    return mask


def random_cell_mask(size: Size, generator: torch.Generator, area: Optional[float] = None,
                     cells: Optional[int] = None) -> Tensor:
    """An attribution-shaped region: :func:`cell_region` of a random smooth map (bilinear upsampling of 2x2 to 6x6
    noise), area drawn in [0.05, 0.3] unless given, (H, W) bool."""
    h, w = _hw(size)
    g = 2 + int(torch.randint(5, (), generator=generator, device=generator.device))
    noise = torch.rand((1, 1, g, g), generator=generator, device=generator.device).cpu()
    smooth = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    area = _uniform(generator, 0.05, 0.3) if area is None else area
    return cell_region(smooth, (h, w), cells, area)[0, 0]


def training_masks(batch: Union[int, Tensor, Mapping[str, Any]], size: Size, generator: torch.Generator,
                   families: Sequence[str] = MASK_FAMILIES, device: Union[str, torch.device, None] = None) -> Tensor:
    """Inpainting masks for bridge training, one family per image drawn uniformly from ``families``: (B, 1, H, W) bool.

    ``batch`` is the batch size (or images (B, ...), or a batch dict with "image"). Families: "freeform1020" and
    "freeform2030" (free-form strokes over 10-20 % / 20-30 % of the image), "center" (a centred box of half the
    image's sides, 25 %), "cells" (the top cells of a random smooth map, area 0.05-0.3, c = size / 16).
    Deterministic given the generator's state (a CPU generator is cheapest); the masks are built on the CPU and
    moved to ``device``.
    """
    if isinstance(batch, Mapping):
        batch = batch["image"]
    b = int(batch.shape[0]) if isinstance(batch, Tensor) else int(batch)
    if b < 0:
        raise ValueError(f"batch size must be >= 0, got {b}")
    unknown = [f for f in families if f not in MASK_FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown mask families {unknown or list(families)}; choose from {', '.join(MASK_FAMILIES)}")
    h, w = _hw(size)
    picks = torch.randint(len(families), (b,), generator=generator, device=generator.device).tolist()
    out = []
    for k in picks:
        family = families[k]
        if family == "freeform1020":
            m = freeform_mask((h, w), 0.1, 0.2, generator)
        elif family == "freeform2030":
            m = freeform_mask((h, w), 0.2, 0.3, generator)
        elif family == "center":
            m = box_mask((h, w))
        else:
            m = random_cell_mask((h, w), generator)
        out.append(m)
    masks = torch.stack(out)[:, None] if out else torch.zeros(0, 1, h, w, dtype=torch.bool)
    return masks.to(device) if device is not None else masks


class _BankItems:
    """Mask i of a bank, drawn from a generator seeded by (seed, i): the same bank for any number of workers."""

    def __init__(self, n: int, size: Size, seed: int, families: Sequence[str]) -> None:
        self.n, self.size, self.seed, self.families = n, size, seed, tuple(families)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        return training_masks(1, self.size, g, self.families)[0]


def mask_bank(n: int, size: Size, seed: int = 0, families: Sequence[str] = MASK_FAMILIES,
              workers: Optional[int] = None) -> Tensor:
    """``n`` training masks (n, 1, H, W) bool, mask i drawn by :func:`training_masks` from a generator seeded by
    (seed, i), in ``workers`` loader processes (default: up to 16 of the machine's cores)."""
    if n <= 0:
        raise ValueError(f"a mask bank needs at least one mask, got n={n}")
    workers = min(16, os.cpu_count() or 1) if workers is None else workers
    workers = workers if n >= 256 else 0
    loader = DataLoader(_BankItems(n, size, seed, families), batch_size=64, num_workers=workers)
    return torch.cat(list(loader))


# --------------------------------------------------------------------------- regions with room
