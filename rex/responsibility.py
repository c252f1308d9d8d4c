"""Causal responsibility of the 4 superpixels of a partition (Definition 4.4, Algorithm 1)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ResponsibilityRule = Literal["paper", "tool"]

N_PARTS = 4
_SUBSETS = torch.arange(2**N_PARTS)
#: VISIBLE[v, j]: superpixel j is visible (kept at its original value) in subset v (bit j of v).
VISIBLE = (_SUBSETS[:, None] >> torch.arange(N_PARTS)) & 1 == 1
#: The 14 non-trivial mutants: subsets with at least one and at most three visible superpixels.
MUTANT_SUBSETS = _SUBSETS[(VISIBLE.sum(1) > 0) & (VISIBLE.sum(1) < N_PARTS)]
FULL = 2**N_PARTS - 1
#: CONTAINS[u, v]: subset u of the superpixels is contained in subset v.
CONTAINS = (_SUBSETS[:, None] & _SUBSETS[None, :]) == _SUBSETS[:, None]


def subset_outcomes(mutant_pass: Tensor, empty_pass: Tensor, full_pass: Tensor) -> Tensor:
    """Outcomes (T, 16) of all visible subsets from the 14 mutants and the two known ones (section 5.4)."""
    out = torch.zeros(mutant_pass.shape[0], 2**N_PARTS, dtype=torch.bool, device=mutant_pass.device)
    out[:, MUTANT_SUBSETS.to(out.device)] = mutant_pass
    out[:, 0] = empty_pass
    out[:, FULL] = full_pass
    return out


def implied_outcomes(known: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Observation 4.6's monotone reading of a split: keeping a superset of a passing subset's superpixels passes,
    keeping a subset of a failing one's fails. From the outcomes `value` (T, 16) where `known` (T, 16): which
    subsets are decided (known, or implied one way only) and their outcomes (T, 16)."""
    contains = CONTAINS.to(known.device).float()
    up = ((known & value).float() @ contains) > 0
    down = ((known & ~value).float() @ contains.T) > 0
    return known | (up ^ down), torch.where(known, value, up)


def non_monotone(outcomes: Tensor) -> Tensor:
    """Whether each split's outcomes (T, 16) break Observation 4.6's monotone reading (`implied_outcomes`): some
    subset passes while a subset holding it fails."""
    broken = outcomes[:, :, None] & ~outcomes[:, None, :] & CONTAINS.to(outcomes.device)[None]
    return broken.flatten(1).any(1)


def responsibility(outcomes: Tensor, rule: ResponsibilityRule = "paper") -> Tensor:
    """Algorithm 1 / Definition 4.4: responsibility (T, 4) of each superpixel from subset outcomes (T, 16).

    "paper": r_j = 1 / (k + 1), k the fewest other masked superpixels of a passing mutant with j visible
    whose classification changes when j is masked too (0 without such a witness).
    "tool": the public tool's rule, every superpixel of every passing non-trivial subset S gets 1 / |S|.
    """
    visible = VISIBLE.to(outcomes.device)
    n_visible = visible.sum(1)
    if rule == "tool":
        passing = outcomes.clone()
        passing[:, [0, FULL]] = False
        weight = visible.float() / n_visible.clamp(min=1)[:, None]
        return passing.float() @ weight
    if rule != "paper":
        raise ValueError(f"unknown responsibility rule {rule!r}")
    flip = _SUBSETS.to(outcomes.device)[:, None] ^ (1 << torch.arange(N_PARTS, device=outcomes.device))
    witness = visible & outcomes[:, :, None] & ~outcomes[:, flip]
    degree = 1.0 / (N_PARTS - n_visible + 1).float()
    return (witness.float() * degree[None, :, None]).amax(1)
