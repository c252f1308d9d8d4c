"""Random box partitions (section 5.1): split boxes into 4 superpixels at a random split point."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy import stats
from torch import Tensor

SplitDistribution = Literal["uniform", "binom", "betabinom"]


def _split_offsets(
    sizes: Tensor, u: Tensor, distribution: SplitDistribution, dist_args: tuple[float, ...]
) -> Tensor:
    """Inverse-CDF draw of an offset in [1, size - 1] for every size (0 where size < 2)."""
    slots = (sizes - 1).clamp(min=1)
    if distribution == "uniform":
        idx = torch.floor(u * slots).long()
    else:
        grid = np.arange(int(slots.max()))[None, :]
        n, row = np.unique((slots - 1).numpy(), return_inverse=True)  # one CDF per distinct box side
        if distribution == "binom":
            cdf = stats.binom.cdf(grid, n[:, None], dist_args[0] if dist_args else 0.5)
        elif distribution == "betabinom":
            a, b = dist_args if dist_args else (1.1, 1.1)
            cdf = stats.betabinom.cdf(grid, n[:, None], a, b)
        else:
            raise ValueError(f"unknown split distribution {distribution!r}")
        idx = (torch.from_numpy(cdf[row.reshape(-1)]).to(u.dtype) < u[:, None]).sum(1)
    idx = torch.minimum(idx, slots - 1)
    return torch.where(sizes >= 2, idx + 1, torch.zeros_like(idx))


def split_boxes(
    boxes: Tensor,
    generator: torch.Generator,
    distribution: SplitDistribution = "uniform",
    dist_args: tuple[float, ...] = (),
) -> Tensor:
    """Section 5.1: split boxes (T, 4) = (r0, r1, c0, c1) at one random point into 4 children (T, 4, 4)."""
    boxes = boxes.cpu()
    u = torch.rand(boxes.shape[0], 2, generator=generator, dtype=torch.float64)
    r = boxes[:, 0] + _split_offsets(boxes[:, 1] - boxes[:, 0], u[:, 0], distribution, dist_args)
    c = boxes[:, 2] + _split_offsets(boxes[:, 3] - boxes[:, 2], u[:, 1], distribution, dist_args)
    r0, r1, c0, c1 = boxes.unbind(1)
    rows = torch.stack([torch.stack([r0, r]), torch.stack([r0, r]), torch.stack([r, r1]), torch.stack([r, r1])], 1)
    cols = torch.stack([torch.stack([c0, c]), torch.stack([c, c1]), torch.stack([c0, c]), torch.stack([c, c1])], 1)
    return torch.cat([rows, cols], 0).permute(2, 1, 0)


def box_area(boxes: Tensor) -> Tensor:
    """Number of pixels of boxes (..., 4)."""
    return (boxes[..., 1] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 2]).clamp(min=0)


def box_masks(boxes: Tensor, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Pixel masks (..., H, W) bool of boxes (..., 4) = (r0, r1, c0, c1)."""
    boxes = boxes.to(device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_r = (rows >= boxes[..., 0:1]) & (rows < boxes[..., 1:2])
    in_c = (cols >= boxes[..., 2:3]) & (cols < boxes[..., 3:4])
    return in_r[..., :, None] & in_c[..., None, :]


def quadrant_labels(children: Tensor, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Label maps (T, H, W) uint8 of split boxes (T, 4, 4) from `split_boxes`: the child (0-3) each pixel of the
    parent lies in, 4 outside the parent."""
    children = children.to(device)
    r0, r1, c0, c1 = children[:, 0, 0], children[:, 3, 1], children[:, 0, 2], children[:, 3, 3]
    r, c = children[:, 3, 0], children[:, 3, 2]
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    below = rows >= r[:, None, None]
    right = cols >= c[:, None, None]
    inside = (rows >= r0[:, None, None]) & (rows < r1[:, None, None]) & (cols >= c0[:, None, None]) & (
        cols < c1[:, None, None])
    return torch.where(inside, 2 * below.to(torch.uint8) + right.to(torch.uint8), 4)
