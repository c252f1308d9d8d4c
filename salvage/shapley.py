"""Shapley distributions and losses: Salvage's u(S) with the JS divergence (eq. 4-5), ViT-Shapley's normalised MSE, exact values (eq. 1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def coalition_logits(phi_plus: Tensor, phi_minus: Tensor, masks: Tensor) -> Tensor:
    """Eq. 4 inside sigma: sum_{i in S} phi+_i + sum_{i not in S} phi-_i, for phi (B, C, n) and masks (B, M, n) -> (B, M, C)."""
    visible = masks.to(phi_plus.dtype)
    return torch.einsum("bmn,bcn->bmc", visible, phi_plus) + torch.einsum("bmn,bcn->bmc", 1 - visible, phi_minus)


def shapley_distribution(logits: Tensor, temperature: float = 1.0, binary: bool = False) -> Tensor:
    """Eq. 4: u(S) = softmax(logits / T) over classes; binary: logits (..., 1) -> [1 - sigmoid, sigmoid] (..., 2)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = logits.float() / temperature
    if binary:
        if z.shape[-1] != 1:
            raise ValueError(f"a binary Shapley distribution needs one logit per coalition, got {z.shape[-1]}")
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=-1)
    return z.softmax(-1)


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Jensen-Shannon divergence (natural log) between distributions over the last dimension (eq. 5's D_JS)."""
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p) - torch.xlogy(p, m.clamp_min(eps))
    kl_qm = torch.xlogy(q, q) - torch.xlogy(q, m.clamp_min(eps))
    return 0.5 * (kl_pm + kl_qm).sum(-1)


def js_loss(phi_plus: Tensor, phi_minus: Tensor, masks: Tensor, values: Tensor, temperature: float = 1.0,
            binary: bool = False) -> Tensor:
    """Eq. 5: mean over images and masks of D_JS(u(S) || v(S)); values (B, M, C) are the game's probabilities v(S)."""
    u = shapley_distribution(coalition_logits(phi_plus, phi_minus, masks), temperature, binary)
    return js_divergence(u, values.float()).mean()


def efficient_normalisation(phi: Tensor, grand: Tensor, null: Tensor) -> Tensor:
    """ViT-Shapley's additive efficient normalisation phi + ((v(N) - v(empty)) - sum phi) / n, for phi (B, C, n), v (B, C)."""
    gap = (grand - null) - phi.sum(-1)
    return phi + gap[..., None] / phi.shape[-1]


def vit_shapley_loss(phi: Tensor, masks: Tensor, values: Tensor, grand: Tensor, null: Tensor) -> Tensor:
    """ViT-Shapley (eq. 2 with normalisation): n * MSE(v(empty) + sum_{i in S} phi_i, v(S)) for phi (B, C, n), masks (B, M, n)."""
    phi = efficient_normalisation(phi.float(), grand.float(), null.float())
    pred = null.float()[:, None] + torch.einsum("bmn,bcn->bmc", masks.float(), phi)
    return phi.shape[-1] * torch.nn.functional.mse_loss(pred, values.float())


def all_subsets(n: int, device: str | torch.device = "cpu") -> Tensor:
    """All 2^n coalitions as masks (2^n, n) bool; row s holds the bits of the integer s (patch i = bit i)."""
    s = torch.arange(2**n, device=device)
    return (s[:, None] >> torch.arange(n, device=device)) & 1 == 1


def exact_shapley_values(values: Tensor) -> Tensor:
    """Eq. 1 by brute force: values (2^n, ...) of every coalition in `all_subsets` order -> Shapley values (n, ...)."""
    n = int(round(math.log2(values.shape[0])))
    if 2**n != values.shape[0]:
        raise ValueError(f"need one value per coalition (a power of 2 rows), got {values.shape[0]}")
    subsets = all_subsets(n, values.device)
    size = subsets.sum(-1).double()
    log_w = torch.lgamma(size + 1) + torch.lgamma((n - size).clamp_min(1)) - math.lgamma(n + 1)
    weight = torch.where(subsets, 0.0, log_w.exp()[:, None]).to(values.dtype)
    coalition = torch.arange(2**n, device=values.device)
    joined = coalition[:, None] | (1 << torch.arange(n, device=values.device))[None, :]
    gain = values[joined] - values[coalition][:, None]
    return torch.einsum("si,si...->i...", weight, gain)
