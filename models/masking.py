"""The one masking convention: what a removed pixel becomes, how masks are applied, and the patch-mask samplers.

Pixel masks are (B, H, W) or (B, 1, H, W), True (or 1.0) = kept; patch masks are (B, n_patches) bool, True = visible.
A removed pixel takes the model's mask value: an explicit value if given, else the model's own `mask_value`
attribute (a per-model override), else its input normalisation mean (its `mean` buffer, i.e. 0 after normalisation,
as rex-xai does on normalised tensors), else black. A mask value is one of rex-xai's (`rex_xai.input.input_data`):
a number or a colour (one number per channel); "min" / "mean", the image's minimum / mean over all its channels and
pixels (rex-xai takes them over the tensor it feeds the model, here in [0, 1] pixel space); "random", one grey level
per image drawn uniformly between the image's minimum and maximum (rex-xai draws a new one for every partition,
here one per seed); "noise", uniform [0, 1] noise per pixel, the same for every image; or a context image (C, H, W) or
(B, C, H, W) of the images' size (rex-xai's "context", without its blur). A fill (`mask_fill`) is therefore
(1 or B, 1 or C, 1 or H, 1 or W); a per-image fill follows each mutant's image index. ReX, the perturbation
baselines, every metric and the maskable CNN wrapper mask through `mask_fill` and `apply_mask`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MaskValue = float | Sequence[float] | Tensor | str | None
#: The mask values computed from the images themselves (see the module docstring).
NAMED_MASK_VALUES = ("min", "mean", "random", "noise")


def mask_value_of(model: nn.Module | None = None, value: MaskValue = None) -> Tensor | str:
    """The mask value in force (module docstring): `value`, else `model.mask_value`, else `model.mean`, else 0."""
    if value is None and model is not None:
        value = getattr(model, "mask_value", None)
        if value is None:
            value = getattr(model, "mean", None)
            value = value if isinstance(value, Tensor) else None
    if value is None:
        value = 0.0
    if isinstance(value, str):
        if value not in NAMED_MASK_VALUES:
            raise ValueError(f"unknown mask value {value!r}: the named ones are {', '.join(NAMED_MASK_VALUES)}; "
                             "a context image is given as a tensor (C, H, W) or (B, C, H, W)")
        return value
    fill = torch.as_tensor(value, dtype=torch.float32).detach()
    if fill.numel() in (1, 3) or fill.dim() in (3, 4):
        return fill
    raise ValueError(f"mask value must be one number or one per channel (3), a named value "
                     f"({', '.join(NAMED_MASK_VALUES)}) or a context image (C, H, W) or (B, C, H, W), "
                     f"got shape {tuple(fill.shape)}")


def mask_fill(
    model: nn.Module | None = None, value: MaskValue = None, images: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """What removed pixels take (module docstring), (1 or B, 1 or C, 1 or H, 1 or W); named values need `images`,
    "random" and "noise" draw from `generator` (default: seed 0)."""
    value = mask_value_of(model, value)
    if not isinstance(value, str):
        if value.numel() in (1, 3):
            return value.flatten().view(1, -1, 1, 1)
        context = value if value.dim() == 4 else value[None]
        return context if images is None else expand_fill(context, images)[: context.shape[0]]
    if images is None:
        raise ValueError(f"mask value {value!r} is computed from the images: pass them to mask_fill")
    generator = generator or torch.Generator().manual_seed(0)
    flat = images.detach().flatten(1)
    per_image = (images.shape[0], 1, 1, 1)
    if value == "min":
        return flat.amin(1).view(per_image)
    if value == "mean":
        return flat.mean(1).view(per_image)
    if value == "random":
        low, high = flat.amin(1), flat.amax(1)
        return (low + torch.rand((), generator=generator).to(images) * (high - low)).view(per_image)
    return torch.rand((1, *images.shape[1:]), generator=generator).to(images)


def expand_fill(fill: Tensor | float, images: Tensor, index: Tensor | None = None) -> Tensor:
    """`fill` broadcast to images[index] (or `images`), a per-image fill following the index; a fill that does not
    fit fails naming both shapes."""
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill.dim() < 4:
        fill = fill.reshape(1, -1, 1, 1)
    b, c, h, w = images.shape
    if (fill.shape[0] not in (1, b) or fill.shape[1] not in (1, c) or fill.shape[2:] not in ((1, 1), (h, w))):
        raise ValueError(f"mask fill of shape {tuple(fill.shape)} does not fit images of shape {tuple(images.shape)}: "
                         "a context image must be (C, H, W) or (B, C, H, W) at the images' size and batch")
    if index is not None:
        fill = fill.index_select(0, index) if fill.shape[0] > 1 else fill
        return fill.expand(len(index), c, h, w)
    return fill.expand(b, c, h, w)


def apply_mask(images: Tensor, visible: Tensor, fill: Tensor | float = 0.0, index: Tensor | None = None) -> Tensor:
    """Images (or images[index]) with pixels outside `visible` (M, H, W) or (M, 1, H, W) set to `fill` (see
    `expand_fill`): a lerp with 0/1 weights, exact at both ends (several times faster on CPU than `torch.where`);
    fractional weights blend."""
    kept = images if index is None else images.index_select(0, index)
    fill = expand_fill(fill, images, index)
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
