"""Patch-mask samplers over n patches (True = visible); every sampler takes a torch.Generator."""
from __future__ import annotations

import torch
from torch import Tensor


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
