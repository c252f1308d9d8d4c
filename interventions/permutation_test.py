"""Algorithm 1 (poster): permutation test for changes in prediction behaviour along an ordered intervention sequence.

Statistic S = mean |finite-difference gradient| of the ordered predictions (per unit x, i.e. the property gradient).
A smooth dependence on x makes S SMALLER than for shuffled orders (shuffling turns a trend into jumps), so the test is
two-sided around the permutation mean, as in the reference implementation: with b = #{k : |S_k - m| >= |S - m|} and
m the mean of the K permuted statistics (">=" makes a constant sequence p = 1), p = (1 + b) / (1 + K), the standard
Monte Carlo p-value (the observed order counts as one of the orders), which is never 0. `plus_one=False` gives the
poster's count b / K. A one-sided "S_k >= S" test would call a step p ~ 1. The test detects any ordered change,
however small: S and the prediction flips carry the effect size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interventions.property_gradient import property_gradient


@dataclass
class PermutationTestResult:
    """Per sequence: the statistic S (B,), the p-value (B,) and the permutation null distribution (B, K)."""

    statistic: Tensor
    p_value: Tensor
    null: Tensor


def permuted_statistics(curves: Tensor, x: Tensor, num_permutations: int, generator: torch.Generator | None) -> Tensor:
    """S of K random reorderings of every sequence (B, K), all in one tensor op: argsort of (B, K, N) random keys."""
    b, n = curves.shape
    device = generator.device if generator is not None else curves.device
    order = torch.rand((b, num_permutations, n), generator=generator, device=device).argsort(-1).to(curves.device)
    shuffled = curves.unsqueeze(1).expand(b, num_permutations, n).gather(-1, order)
    return property_gradient(shuffled, x)


def centred_p_value(statistic: Tensor, null: Tensor, plus_one: bool = True) -> Tensor:
    """Two-sided p-value centred on the permutation mean (reference implementation of Algorithm 1's compare):
    (1 + b) / (1 + K), or the poster's b / K with `plus_one=False`."""
    centre = null.mean(-1, keepdim=True)
    observed = (statistic.unsqueeze(-1) - centre).abs()
    tolerance = 100 * torch.finfo(null.dtype).eps * torch.maximum(statistic.abs().unsqueeze(-1), centre.abs())
    count = ((null - centre).abs() >= observed - tolerance).sum(-1).to(null.dtype)
    k = null.shape[-1]
    return (count + 1) / (k + 1) if plus_one else count / k


def permutation_test(
    curves: Tensor,
    x: Tensor | None = None,
    num_permutations: int = 1000,
    generator: torch.Generator | None = None,
    plus_one: bool = True,
    chunk_size: int | None = None,
) -> PermutationTestResult:
    """Algorithm 1 for B ordered prediction sequences (B, N) at grid x (N,): S, centred two-sided p and the null."""
    if curves.dim() != 2:
        raise ValueError(f"curves must have shape (B, N), got {tuple(curves.shape)}")
    x = torch.linspace(0, 1, curves.shape[1], device=curves.device) if x is None else x.to(curves.device)
    statistic = property_gradient(curves, x)
    chunks = curves.split(chunk_size) if chunk_size else (curves,)
    null = torch.cat([permuted_statistics(c, x, num_permutations, generator) for c in chunks])
    return PermutationTestResult(statistic, centred_p_value(statistic, null, plus_one), null)


def prediction_flips(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction flips along (B, N) argmax labels: number of changes between neighbours (B,) and whether any (B,)."""
    count = (labels[..., 1:] != labels[..., :-1]).sum(-1)
    return count, count > 0
