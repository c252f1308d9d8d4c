"""Property gradient E_x[|dF(I_x)/dx|] over N equidistant x (poster section 3), by finite differences and by jvp.

F(I_x) is the softmax probability of a fixed target class. By default the target is the class predicted on the
ORIGINAL, unintervened image (`target_from="original"`); `target_from="start"` uses the class predicted on I_0 instead.
Derivatives are per unit x, so values are comparable across N.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from interventions.intervene import Intervention


def intervention_grid(num_steps: int = 100, device: torch.device | str | None = None) -> Tensor:
    """The N equidistant property realisations x in [0, 1] (poster section 3, the set X)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    return torch.linspace(0, 1, num_steps, device=device)


@torch.no_grad()
def target_class(
    model: nn.Module, images: Tensor, intervention: Intervention, target_from: Literal["original", "start"] = "original"
) -> Tensor:
    """The class whose probability F tracks: argmax on the original images, or on I_0 (poster section 3, F_theta)."""
    if target_from == "original":
        return model(images).argmax(-1)
    if target_from == "start":
        return model(intervention(images, 0.0)).argmax(-1)
    raise ValueError(f"target_from must be 'original' or 'start', got {target_from!r}")


@torch.no_grad()
def prediction_sequence(
    model: nn.Module, images: Tensor, intervention: Intervention, x: Tensor, batch_size: int = 256
) -> Tensor:
    """Softmax outputs (B, N, C) of the model on I_x for every x in the grid (poster section 3, F_theta(I_x))."""
    b = images.shape[0]
    steps_per_call = max(1, batch_size // b)
    out = []
    for start in range(0, len(x), steps_per_call):
        xs = x[start : start + steps_per_call]
        batch = torch.cat([intervention(images, float(v)) for v in xs])
        probs = torch.cat([model(chunk).softmax(-1) for chunk in batch.split(batch_size)])
        out.append(probs.view(len(xs), b, -1).transpose(0, 1))
    return torch.cat(out, 1)


def finite_difference_gradient(curve: Tensor, x: Tensor) -> Tensor:
    """dF/dx (..., N) along the last axis: central differences inside, one-sided at both ends (poster section 3)."""
    steps = x.double().diff()
    equidistant = bool(torch.allclose(steps, steps.mean(), rtol=1e-4, atol=0.0))
    spacing = (float(steps.mean()),) if equidistant else (x.to(curve),)
    return torch.gradient(curve, spacing=spacing, dim=-1, edge_order=1)[0]


def property_gradient(curve: Tensor, x: Tensor) -> Tensor:
    """E_x[|dF(I_x)/dx|] (...) from ordered predictions (..., N) by finite differences (poster section 3, eq. (*))."""
    return finite_difference_gradient(curve, x).abs().mean(-1)


def autograd_derivative(
    model: nn.Module, images: Tensor, intervention: Intervention, x: Tensor, target: Tensor, chunk_size: int = 16
) -> Tensor:
    """Exact dF(I_x)/dx (B, N) by forward-mode autograd (torch.func.jvp), vmapped over chunks of the x grid."""
    rows = torch.arange(images.shape[0], device=images.device)

    def prob(xv: Tensor) -> Tensor:
        return model(intervention(images, xv)).softmax(-1)[rows, target]

    def derivative(xv: Tensor) -> Tensor:
        return torch.func.jvp(prob, (xv,), (torch.ones_like(xv),))[1]

    with torch.no_grad():
        return torch.func.vmap(derivative, chunk_size=chunk_size)(x.to(images)).T


def autograd_property_gradient(
    model: nn.Module, images: Tensor, intervention: Intervention, x: Tensor, target: Tensor, chunk_size: int = 16
) -> Tensor:
    """E_x[|dF(I_x)/dx|] (B,) with exact derivatives by jvp, the check on the finite differences (poster section 3)."""
    return autograd_derivative(model, images, intervention, x, target, chunk_size).abs().mean(-1)
