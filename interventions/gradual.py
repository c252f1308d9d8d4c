"""One call from (model, images, intervention) to per-image property gradient, Algorithm 1 p-value and flips.

`num_steps` defaults to the intervention's own `num_steps` (precomputed sequences) or 100. The tracked class is
`target` if given, else the argmax on the original images (`target_from="original"`) or on I_0 (`"start"`).
`autograd=True` adds the jvp property gradient (the intervention must be differentiable in x). The model is used as
given: put it in eval mode first. S (`gradient`) is the finite-difference property gradient per unit x.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from interventions.intervene import Intervention
from interventions.permutation_test import permutation_test, prediction_flips
from interventions.property_gradient import (
    autograd_property_gradient,
    intervention_grid,
    prediction_sequence,
    target_class,
)


@dataclass
class GradualInterventionResult:
    """Per image (B): target class, F(I_x) curve (B, N), S = E_x|dF/dx|, p, significance, flips; x grid (N,)."""

    x: Tensor
    target: Tensor
    curve: Tensor
    labels: Tensor
    gradient: Tensor
    p_value: Tensor
    significant: Tensor
    flip_count: Tensor
    flipped: Tensor
    gradient_autograd: Tensor | None = None


def gradual_intervention_test(
    model: nn.Module,
    images: Tensor,
    intervention: Intervention,
    num_steps: int | None = None,
    num_permutations: int = 1000,
    delta: float = 0.01,
    generator: torch.Generator | None = None,
    target_from: Literal["original", "start"] = "original",
    target: Tensor | None = None,
    plus_one: bool = True,
    autograd: bool = False,
    batch_size: int = 256,
) -> GradualInterventionResult:
    """Poster sections 3-4: F(I_x) on N equidistant x, E_x|dF/dx|, Algorithm 1 (K permutations, p < delta), flips."""
    num_steps = num_steps or getattr(intervention, "num_steps", 100)
    x = intervention_grid(num_steps, device=images.device)
    if target is None:
        target = target_class(model, images, intervention, target_from)
    probs = prediction_sequence(model, images, intervention, x, batch_size)
    curve = probs.gather(-1, target.view(-1, 1, 1).expand(-1, num_steps, 1)).squeeze(-1)
    labels = probs.argmax(-1)
    test = permutation_test(curve, x, num_permutations, generator, plus_one)
    flip_count, flipped = prediction_flips(labels)
    grad_ad = autograd_property_gradient(model, images, intervention, x, target) if autograd else None
    return GradualInterventionResult(
        x=x,
        target=target,
        curve=curve,
        labels=labels,
        gradient=test.statistic,
        p_value=test.p_value,
        significant=test.p_value < delta,
        flip_count=flip_count,
        flipped=flipped,
        gradient_autograd=grad_ad,
    )
