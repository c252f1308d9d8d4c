"""Mask samplers for training the Salvage explainer: Shapley-weighted, KernelSHAP and attribution-guided (Algorithm 3).

Every sampler returns masks (B, M, n) bool, True = visible, and takes a torch.Generator.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.masking import subsets_of_size

SAMPLERS = ("shapley", "kernel", "guided")


def shapley_masks(batch: int, masks_per_image: int, n: int, generator: torch.Generator | None = None,
                  device: str | torch.device = "cpu") -> Tensor:
    """Masks from p_w(S) ~ w_S (eq. 2): every size 0..n has the same total Shapley weight, so draw the size uniformly, then a uniform subset."""
    sizes = torch.randint(0, n + 1, (batch * masks_per_image,), generator=generator, device=device)
    return subsets_of_size(sizes, n, generator).view(batch, masks_per_image, n)


def kernel_size_weights(n: int) -> Tensor:
    """The KernelSHAP law of the number of visible patches, p(k) ~ (n - 1) / (k (n - k)) for k = 1..n-1 (index k)."""
    if n < 2:
        raise ValueError(f"the KernelSHAP size law needs at least 2 patches, got {n}")
    k = torch.arange(n + 1, dtype=torch.float64)
    w = torch.zeros(n + 1, dtype=torch.float64)
    w[1:n] = (n - 1) / (k[1:n] * (n - k[1:n]))
    return w / w.sum()


def kernel_masks(batch: int, masks_per_image: int, n: int, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu") -> Tensor:
    """Masks with the KernelSHAP size law p(k) ~ 1/(k (n - k)), k in 1..n-1 (as in ViT-Shapley), uniform subset of that size."""
    probs = kernel_size_weights(n).float().to(device)
    sizes = torch.multinomial(probs, batch * masks_per_image, replacement=True, generator=generator)
    return subsets_of_size(sizes, n, generator).view(batch, masks_per_image, n)


def weighted_subsets(weights: Tensor, sizes: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Masks (..., n) of sizes[...] patches drawn without replacement with probabilities ~ weights (exponential race = Gumbel top-k keys; Algorithms 2-3)."""
    if weights.shape[:-1] != sizes.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and sizes {tuple(sizes.shape)} do not match")
    race = torch.empty(weights.shape, device=weights.device).exponential_(generator=generator)
    keys = race / weights.float().clamp_min(0).add(1e-12)
    ranks = keys.argsort(dim=-1).argsort(dim=-1)
    return ranks < sizes[..., None]


def min_max_normalise(phi: Tensor) -> Tensor:
    """(phi - min) / (max - min) over the last dimension (Algorithm 2-3, line 3-5); a constant map becomes uniform weights 1."""
    lo, hi = phi.amin(-1, keepdim=True), phi.amax(-1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (phi - lo) / span.clamp_min(torch.finfo(phi.dtype).tiny), torch.ones_like(phi))


def guided_masks(phi: Tensor, masks_per_image: int, generator: torch.Generator | None = None) -> Tensor:
    """Algorithm 3: for phi (B, n) of the target class, half the masks keep m ~ U(1, n) patches drawn with phi_norm, half with 1 - phi_norm."""
    if masks_per_image % 2:
        raise ValueError(f"guided sampling draws two equal halves: masks_per_image must be even, got {masks_per_image}")
    batch, n = phi.shape
    norm = min_max_normalise(phi.detach().float())
    half = masks_per_image // 2
    weights = torch.cat([norm[:, None].expand(batch, half, n), (1 - norm)[:, None].expand(batch, half, n)], dim=1)
    sizes = torch.randint(1, n + 1, (batch, masks_per_image), generator=generator, device=phi.device)
    return weighted_subsets(weights, sizes, generator)


def sample_masks(sampler: str, batch: int, masks_per_image: int, n: int, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", phi: Tensor | None = None) -> Tensor:
    """Masks (B, M, n) from the sampler named `sampler` ('shapley', 'kernel' or 'guided', which needs phi (B, n))."""
    if sampler == "shapley":
        return shapley_masks(batch, masks_per_image, n, generator, device)
    if sampler == "kernel":
        return kernel_masks(batch, masks_per_image, n, generator, device)
    if sampler == "guided":
        if phi is None:
            raise ValueError("the guided sampler needs the current attributions phi (B, n) of the target class")
        return guided_masks(phi, masks_per_image, generator)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
