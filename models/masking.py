"""The one masking convention: what a removed pixel becomes, how masks are applied, and the patch-mask samplers.

Pixel masks are (B, H, W) or (B, 1, H, W), True (or 1.0) = kept; patch masks are (B, n_patches) bool, True = visible.
A removed pixel takes the model's mask value: an explicit value if given, else the model's own `mask_value`
attribute (a per-model override), else its input normalisation mean (its `mean` buffer, i.e. 0 after normalisation,
as rex-xai does on normalised tensors), else black. ReX, the perturbation baselines, every metric and the maskable
CNN wrapper mask through `mask_fill` and `apply_mask`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MaskValue = float | Sequence[float] | Tensor | None


def mask_fill(model: nn.Module | None = None, value: MaskValue = None) -> Tensor:
    """The colour (1, 1 or 3, 1, 1) removed pixels take: `value`, else `model.mask_value`, else `model.mean`, else 0."""
    if value is None and model is not None:
        value = getattr(model, "mask_value", None)
        if value is None:
            value = getattr(model, "mean", None)
            value = value if isinstance(value, Tensor) else None
    if value is None:
        value = 0.0
    fill = torch.as_tensor(value, dtype=torch.float32).detach().flatten()
    if fill.numel() not in (1, 3):
        raise ValueError(f"mask value must be one number or one per channel (3), got {fill.numel()} values")
    return fill.view(1, -1, 1, 1)


def apply_mask(images: Tensor, visible: Tensor, fill: Tensor | float = 0.0, index: Tensor | None = None) -> Tensor:
    """Images (or images[index]) with pixels outside `visible` (M, H, W) or (M, 1, H, W) set to `fill`: a lerp with
    0/1 weights, exact at both ends (several times faster on CPU than `torch.where`); fractional weights blend."""
    kept = images if index is None else images.index_select(0, index)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1).expand_as(kept)
    weight = visible.to(device=images.device, dtype=images.dtype)
    if weight.dim() == 3:
        weight = weight[:, None]
    if weight.shape[-2:] != kept.shape[-2:] or weight.shape[0] != kept.shape[0]:
        raise ValueError(f"mask of shape {tuple(visible.shape)} does not fit images of shape {tuple(kept.shape)}; "
                         "pixel masks are (B, H, W) or (B, 1, H, W) at the image size")
    return torch.lerp(fill, kept, weight)


def patch_to_pixel(patch_mask: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Pixel mask (B, 1, H, W) bool of a patch mask (B, gh * gw) over `grid`."""
    cells = patch_mask.reshape(-1, 1, *grid).float()
    return F.interpolate(cells, size=tuple(size), mode="nearest").bool()


def subsets_of_size(sizes: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Masks (B, n) with sizes[b] visible patches, the subset uniform among those of that size."""
    keys = torch.rand(sizes.shape[0], n, generator=generator, device=sizes.device)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < sizes[:, None]


def uniform_size_masks(batch: int, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Tensor:
    """Masks whose number of visible patches is uniform on {0, ..., n} (ViT-Shapley's surrogate training law)."""
    sizes = torch.randint(0, n + 1, (batch,), generator=generator, device=device)
    return subsets_of_size(sizes, n, generator)


def fixed_fraction_masks(batch: int, n: int, masked_fraction: float, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Tensor:
    """Masks hiding round(masked_fraction * n) uniformly chosen patches of every image."""
    visible = n - round(masked_fraction * n)
    return subsets_of_size(torch.full((batch,), visible, device=device), n, generator)


def per_image_masks(indices: Tensor, n: int, masked_fraction: float, seed: int) -> Tensor:
    """`fixed_fraction_masks` drawn per image from a generator seeded by (seed, dataset index): the same image gets
    the same mask whatever batch or device it lands in, so evaluation under DDP matches one process."""
    rows = []
    for i in indices.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
        rows.append(fixed_fraction_masks(1, n, masked_fraction, g))
    return torch.cat(rows).to(indices.device)
