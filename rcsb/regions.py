"""The masks RCSB's bridge trains on, and RCSB's regions with room to draw at explanation time.

* :func:`make_rcsb_region`: the region an RCSB call edits: every region of :func:`explainers.regions.make_region`
  ("auto:METHOD", "truth", a mask file, a tensor) plus "box" / "box:MARGIN", the object mask's bounding box dilated
  by a margin (:func:`box_region`), so that a new shape has room beyond the old one's footprint.
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
from torch import Tensor, nn
from torch.utils.data import DataLoader

from explainers.regions import Size, _hw, cell_region, make_region

__all__ = [
    "MASK_FAMILIES",
    "box_mask",
    "box_region",
    "freeform_mask",
    "make_rcsb_region",
    "mask_bank",
    "parse_box_spec",
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


def box_region(mask: Tensor, margin: Union[int, float] = 0) -> Tensor:
    """The bounding box of each image's ``mask`` (B, 1, H, W), dilated by ``margin`` and clipped to the image.

    An int ``margin`` is pixels on every side; a float in [0, 1] is a fraction of the image's side (round(margin * H)
    rows above and below, round(margin * W) columns left and right). Returns (B, 1, H, W) bool. Raises ValueError for
    an image whose mask is empty (it has no box).
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be an int (pixels) or a float fraction of the image side, got {margin!r}")
    if isinstance(margin, float):
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"a fractional margin must lie in [0, 1] (of the image side), got {margin}; "
                             "give pixels as an int")
        dy, dx = round(margin * h), round(margin * w)
    elif margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    else:
        dy = dx = margin
    on = mask.detach() != 0
    rows, cols = on.any(-1)[:, 0], on.any(-2)[:, 0]  # (B, H), (B, W)
    empty = (~rows.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the mask of image(s) {empty} is empty: there is no object to draw a box around")
    ys, xs = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    top = torch.where(rows, ys, h).amin(1) - dy
    bottom = torch.where(rows, ys, -1).amax(1) + dy
    left = torch.where(cols, xs, w).amin(1) - dx
    right = torch.where(cols, xs, -1).amax(1) + dx
    inside_y = (ys[None] >= top[:, None]) & (ys[None] <= bottom[:, None])
    inside_x = (xs[None] >= left[:, None]) & (xs[None] <= right[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def parse_box_spec(spec: str) -> Union[int, float, None]:
    """The margin of a "box" region spec ("box": 0, "box:4": 4 pixels, "box:0.1": a tenth of the image side), or
    None when ``spec`` is not a box spec."""
    if spec == "box":
        return 0
    if not spec.startswith("box:"):
        return None
    value = spec[len("box:"):]
    try:
        margin: Union[int, float] = float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        raise ValueError(f"region {spec!r}: the margin must be pixels (box:4) or a fraction of the image side "
                         f"(box:0.1), got {value!r}") from None
    if margin < 0 or (isinstance(margin, float) and margin > 1):
        raise ValueError(f"region {spec!r}: the margin must be >= 0 pixels (box:4) or a fraction in [0, 1] of the "
                         "image side (box:0.1)")
    return margin


def make_rcsb_region(spec: Union[str, Tensor], model: nn.Module, images: Tensor, predicted: Tensor,
                     batch: Optional[Mapping[str, Any]] = None, area: float = 0.3,
                     cells: Optional[int] = None) -> Tensor:
    """RCSB's region (B, 1, H, W) bool: "box" / "box:MARGIN" (the object mask's bounding box, dilated by MARGIN
    pixels or a fraction of the image side, see :func:`box_region`) or any region of
    :func:`explainers.regions.make_region` ("auto:METHOD", "truth", a mask file, a tensor)."""
    margin = parse_box_spec(spec) if isinstance(spec, str) else None
    if margin is None:
        return make_region(spec, model, images, predicted, batch, area, cells)
    if batch is None or batch.get("mask") is None:
        raise ValueError(f"region {spec!r} is drawn around the data's ground-truth object masks (batch['mask']); "
                         "this data has none. Use 'auto:METHOD' or a mask file instead")
    truth = make_region("truth", model, images, predicted, batch, area, cells)
    return box_region(truth, margin)
