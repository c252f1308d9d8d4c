"""Multiple explanations by spotlight search and Dice separation (rex-xai 0.4.1's `--multi N`, section 6.2).

The tool finds its explanations independently (the global one, then N - 1 spatial searches from random centres,
which may overlap or repeat) and afterwards keeps the largest set whose pairwise Dice coefficients are at most
`permitted_overlap`. `rex.extraction.multiple_explanations` instead controls overlap while extracting: each later
explanation is extracted with all but the lowest `overlap` fraction of every earlier one's pixels excluded, so a later
explanation shares at most that fraction of an earlier one (a bound on |A & B| / |A|, not on the Dice coefficient
2 |A & B| / (|A| + |B|)). Here is the tool's rule.

Differences from the tool: centres are uniform over all pixels (the tool skips pixel 0 and can draw them from its
split distribution), and drawn from a `torch.Generator`; a spotlight that finds nothing gives no explanation (the
tool keeps an empty one, which its separation ignores); see `rex.spatial` for the circle search itself.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.queries import QueryEngine
from rex.extraction import Extraction, extract, full_image_confidence
from rex.spatial import sufficient_circles

#: The Dice rule enumerates every subset of the explanations.
MAX_DICE_EXPLANATIONS = 16


def dice_coefficients(masks: Tensor) -> Tensor:
    """rex-xai's overlap between explanations: pairwise Dice coefficients 2 |A & B| / (|A| + |B|) (B, k, k) of
    masks (B, k, ...), 0 where both are empty."""
    m = masks.flatten(2).double()
    inter = m @ m.transpose(1, 2)
    sizes = m.sum(2)
    total = sizes[:, :, None] + sizes[:, None, :]
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), 0.0)


def dice_separation(masks: Tensor, found: Tensor, permitted_overlap: float = 0.0) -> Tensor:
    """rex-xai's `separate_by`: which explanations (B, k) to keep, the largest set of found, non-empty ones whose
    pairwise Dice coefficients are at most `permitted_overlap`; among equally large sets the smallest total area,
    then the tool's order (the lexicographically last index tuple)."""
    b, k = found.shape
    if k > MAX_DICE_EXPLANATIONS:
        raise ValueError(f"the Dice rule enumerates every subset: at most {MAX_DICE_EXPLANATIONS} explanations, "
                         f"got {k}")
    dev = masks.device
    sizes = masks.flatten(2).sum(2).double()
    present = found.to(dev) & (sizes > 0)
    clash = (dice_coefficients(masks) > permitted_overlap).double()
    clash.diagonal(dim1=1, dim2=2).zero_()
    bits = torch.arange(k, device=dev)
    subsets = (torch.arange(1 << k, device=dev)[:, None] >> bits) & 1
    s = subsets.double()
    conflicts = torch.einsum("si,bij,sj->bs", s, clash, s)
    valid = (conflicts == 0) & ~((subsets[None] == 1) & ~present[:, None]).any(2)
    count = torch.where(valid, subsets.sum(1)[None], -1)
    best = valid & (count == count.amax(1, keepdim=True))
    area = torch.where(best, sizes @ s.T, torch.inf)
    best &= area == area.amin(1, keepdim=True)
    tool_order = (subsets << (k - 1 - bits)).sum(1)
    choice = torch.where(best, tool_order[None], 1 << k).argmin(1)
    return subsets[choice] == 1


def spotlight_explanations(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    generator: torch.Generator,
    k: int = 10,
    permitted_overlap: float = 0.0,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 1,
    check: int | None = 64,
    radius: int = 25,
    growth: float = 0.2,
    expansions: int = 4,
    budget: int = 40,
) -> Extraction:
    """rex-xai's `--multi k`: the global explanation and k - 1 spotlights (spatial searches of at most `expansions`
    circles from a random centre, up to `budget` + 1 distinct centres each), of which `dice_separation` keeps the
    largest compatible set: masks (B, k, 1, H, W), the kept ones first in their search order, found (B, k); each
    explanation extracted in steps of `step` pixels (`extract`)."""
    if k < 1 or budget < 0:
        raise ValueError(f"spotlight search needs k >= 1 and budget >= 0; got k={k}, budget={budget}")
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    maps = maps.to(dev)
    full_confidence, evaluated = full_image_confidence(engine, images, target, full_confidence)
    n_spot = k - 1
    img = torch.arange(b, device=dev).repeat_interleave(n_spot)
    draws = torch.rand(b * n_spot, h * w, generator=generator).topk(min(budget + 1, h * w), dim=1).indices.to(dev)
    centres = torch.stack([draws // w, draws % w], 2)
    circle = torch.zeros(b * n_spot, h, w, dtype=torch.bool, device=dev)
    hit = torch.zeros(b * n_spot, dtype=torch.bool, device=dev)
    for t in range(centres.shape[1]):
        todo = (~hit).nonzero()[:, 0]
        if todo.numel() == 0:
            break
        circle[todo], hit[todo], tried = sufficient_circles(engine, images, img[todo], centres[todo, t], target,
                                                            full_confidence, min_confidence, radius, growth,
                                                            expansions)
        evaluated.index_add_(0, img[todo], tried)
    circle = circle.view(b, n_spot, h, w)
    regions = [None] + [circle[:, j] for j in range(n_spot)]
    exs = [extract(engine, images, maps, target, region, min_confidence, candidates, full_confidence, step, check)
           for region in regions]
    evaluated += sum(ex.evaluated for ex in exs)
    masks = torch.stack([ex.mask for ex in exs], 1)
    keep = dice_separation(masks, torch.stack([ex.found for ex in exs], 1), permitted_overlap)
    order = torch.argsort((~keep).long(), dim=1, stable=True)
    kept = keep.gather(1, order)
    masks = masks.gather(1, order[:, :, None, None, None].expand_as(masks)) & kept[..., None, None, None]
    return Extraction(mask=masks, found=kept, evaluated=evaluated)
