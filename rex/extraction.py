"""Explanation extraction (Algorithm 3, lines 10-17) and multiple explanations (section 6.2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.queries import QueryEngine
from rex.search import passes


@dataclass
class Extraction:
    """Sufficient explanations: pixel masks (B, 1, H, W) True = kept, and whether a sufficient prefix exists."""

    mask: Tensor
    found: Tensor

    @property
    def size(self) -> Tensor:
        """Explanation size as a fraction of the image (section 6), 1.0 where none was found."""
        frac = self.mask.flatten(1).float().mean(1)
        return torch.where(self.found, frac, torch.ones_like(frac))


def pixel_rank(maps: Tensor, region: Tensor | None = None) -> Tensor:
    """Algorithm 3, line 9: rank (B, H*W) of every pixel, high responsibility first, ties by pixel index;
    pixels outside `region` (B, H, W) come last."""
    keys = maps.flatten(1).double()
    if region is not None:
        keys = torch.where(region.flatten(1), keys, -torch.inf)
    order = torch.argsort(keys, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


def _first_candidates(limit: Tensor, k: int) -> Tensor:
    """Geometric prefix sizes (B, k) from 1 to `limit`, strictly increasing where `limit` allows."""
    t = torch.linspace(0, 1, k, device=limit.device, dtype=torch.float64)
    sizes = torch.ceil(limit[:, None].double().clamp(min=1) ** t[None]).long()
    steps = torch.arange(k, device=limit.device)
    sizes = torch.cummax(sizes - steps, dim=1).values + steps
    return torch.minimum(sizes, limit[:, None]).clamp(min=1)


def extract(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    region: Tensor | None = None,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
) -> Extraction:
    """Algorithm 3, lines 10-17: the smallest prefix of the ranking whose masked image keeps the target class
    (with at least `min_confidence` x the full image's confidence): `candidates` prefix sizes per image and
    call, then refined between the last failing and first passing size until they are adjacent."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    rank = pixel_rank(maps.to(dev), region)
    limit = region.flatten(1).sum(1) if region is not None else torch.full((b,), h * w, device=dev)
    if full_confidence is None:
        full_confidence = engine.probabilities(images).gather(1, target[:, None])[:, 0]
    lo = torch.zeros(b, dtype=torch.long, device=dev)
    hi = limit + 1
    active = (limit > 0).nonzero()[:, 0]
    sizes = _first_candidates(limit[active], candidates)
    while active.numel() > 0:
        img = active.repeat_interleave(sizes.shape[1])
        visible = (rank[img] < sizes.flatten()[:, None]).view(-1, h, w)
        probs = engine.masked_probabilities(images, img, visible)
        ok = passes(probs, target[img], full_confidence[img], min_confidence).view(len(active), -1)
        big = torch.iinfo(torch.long).max
        first_pass = torch.where(ok, sizes, big).amin(1)
        hi[active] = torch.minimum(hi[active], first_pass)
        below = torch.where(~ok & (sizes < hi[active, None]), sizes, 0).amax(1)
        lo[active] = torch.maximum(lo[active], below)
        keep = (hi[active] <= limit[active]) & (hi[active] - lo[active] > 1)
        active = active[keep]
        gap = (hi[active] - lo[active])[:, None]
        j = torch.arange(1, candidates, device=dev)[None]
        sizes = lo[active, None] + torch.ceil(gap * j / candidates).long()
    found = hi <= limit
    size = torch.where(found, hi, limit)
    mask = (rank < size[:, None]).view(b, 1, h, w)
    return Extraction(mask=mask, found=found)


def multiple_explanations(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    k: int = 3,
    overlap: float = 0.0,
    separation: int = 0,
    min_confidence: float = 0.0,
    candidates: int = 32,
) -> Extraction:
    """Section 6.2: up to `k` sufficient explanations (B, k, 1, H, W) from one map, each extracted from the
    ranking with the pixels of the earlier ones excluded (all but their lowest `overlap` fraction, grown by
    `separation` pixels), so that later ones sit around other peaks of responsibility."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    full_confidence = engine.probabilities(images).gather(1, target[:, None])[:, 0]
    rank = pixel_rank(maps.to(dev)).view(b, h, w)
    allowed = torch.ones(b, h, w, dtype=torch.bool, device=dev)
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    masks, found = [], []
    for _ in range(k):
        ex = extract(engine, images, maps, target, allowed & alive[:, None, None], min_confidence, candidates, full_confidence)
        ok = ex.found & alive
        masks.append(ex.mask & ok[:, None, None, None])
        found.append(ok)
        alive = ok
        used = ex.mask[:, 0] & ok[:, None, None]
        n_used = used.flatten(1).sum(1)
        order = torch.where(used, rank, h * w)
        within = pixel_rank(-order.float()).view(b, h, w)
        banned = used & (within < torch.ceil((1 - overlap) * n_used.double()).long()[:, None, None])
        if separation > 0:
            banned = F.max_pool2d(banned[:, None].float(), 2 * separation + 1, 1, separation)[:, 0] > 0
        allowed &= ~banned
    return Extraction(mask=torch.stack(masks, 1), found=torch.stack(found, 1))
