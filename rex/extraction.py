"""Explanation extraction (Algorithm 3, lines 10-17) and multiple explanations (section 6.2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur

from models.queries import QueryEngine
from rex.search import passes


@dataclass(frozen=True, kw_only=True)
class ExtractionSettings:
    """How explanations are extracted from the map and which map is returned (Algorithm 3, lines 9-17);
    `rex.presets` names the two settings a user picks.

    `candidates` prefix sizes are tested per image and round, then up to `check` untested sizes below the found one
    (`extract`); `tie_sigma` > 0 breaks the ranking's ties by a map blurred by that many pixels (`tie_broken`);
    `prune_cell` k (None: off) makes a global or spatial explanation minimal by dropping each k x k cell the class
    does not need (`prune`); `explanation_first` returns maps whose ranking starts with the explanation
    (`explanation_first`); `confidence_weight` w > 0 returns unit(map) + w x unit(confidence map) (`rex.confidence`,
    from the queries already made)."""

    candidates: int = 32
    check: int | None = 64
    tie_sigma: float = 0.0
    prune_cell: int | None = None
    explanation_first: bool = False
    confidence_weight: float = 0.0

    def __post_init__(self) -> None:
        """Clear errors for values the extraction cannot use."""
        if self.candidates < 2:
            raise ValueError(f"candidates must be at least 2, not {self.candidates}")
        if self.prune_cell is not None and self.prune_cell < 1:
            raise ValueError(f"prune_cell must be None (off) or at least 1, not {self.prune_cell}")
        if self.confidence_weight < 0:
            raise ValueError(f"confidence_weight must be at least 0, not {self.confidence_weight}")
        if self.tie_sigma < 0:
            raise ValueError(f"tie_sigma must be at least 0, not {self.tie_sigma}")


@dataclass
class Extraction:
    """Sufficient explanations: pixel masks (B, 1, H, W) True = kept, whether a sufficient prefix exists, and the
    model evaluations (B,) spent per image where counted."""

    mask: Tensor
    found: Tensor
    evaluated: Tensor | None = None

    @property
    def size(self) -> Tensor:
        """Explanation size as a fraction of the image (section 6), 1.0 where none was found."""
        frac = self.mask.flatten(1).float().mean(1)
        return torch.where(self.found, frac, torch.ones_like(frac))


def full_image_confidence(engine: QueryEngine, images: Tensor, target: Tensor,
                          full_confidence: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Algorithm 3's reference: the target's confidence (B,) on the full images, `full_confidence` when the caller
    has it, and the model evaluations (B,) this spent (1 per image when it had to ask, else 0)."""
    evaluated = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    if full_confidence is None:
        full_confidence = engine.probabilities(images).gather(1, target.to(images.device)[:, None])[:, 0]
        evaluated += 1
    return full_confidence, evaluated


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


def tie_broken(maps: Tensor, sigma: float) -> Tensor:
    """Algorithm 3, line 9 with ties broken by a Gaussian-blurred copy of the map (pixels nearer the centre of
    responsibility mass first, a smoothing as in SmoothGrad) instead of by pixel index: keys (B, H, W) float64
    without ties whose `pixel_rank` is that ranking; `maps` themselves where `sigma` is 0. The blur is torchvision's,
    3 sigma each side (at most the map's size less one), edges reflected."""
    if sigma <= 0:
        return maps
    b, h, w = maps.shape
    size = 2 * min(max(1, int(3 * sigma + 0.5)), min(h, w) - 1) + 1
    blurred = gaussian_blur(maps.double()[:, None], [size, size], [sigma, sigma])
    by_blur = torch.argsort(blurred.flatten(1), dim=1, descending=True, stable=True)
    by_map = torch.argsort(maps.flatten(1).double().gather(1, by_blur), dim=1, descending=True, stable=True)
    order = by_blur.gather(1, by_map)
    keys = torch.empty(b, h * w, dtype=torch.float64, device=maps.device)
    keys.scatter_(1, order, torch.arange(h * w, 0, -1, dtype=torch.float64, device=maps.device).expand(b, -1))
    return keys.view(b, h, w)


def _first_candidates(limit: Tensor, k: int) -> Tensor:
    """Geometric prefix sizes (B, k) from 1 to `limit`, strictly increasing where `limit` allows."""
    t = torch.linspace(0, 1, k, device=limit.device, dtype=torch.float64)
    sizes = torch.ceil(limit[:, None].double().clamp(min=1) ** t[None]).long()
    steps = torch.arange(k, device=limit.device)
    sizes = torch.cummax(sizes - steps, dim=1).values + steps
    return torch.minimum(sizes, limit[:, None]).clamp(min=1)


class _Prefixes:
    """Algorithm 3, lines 10-17's sufficiency tests of ranking prefixes: prefix j keeps the min(j x `step`, limit)
    highest ranked pixels (of `region`, if given); every outcome is kept, so no prefix is sent to the model twice,
    and the model evaluations are counted per image (the full image's included when it is asked here)."""

    def __init__(self, engine: QueryEngine, images: Tensor, maps: Tensor, target: Tensor, region: Tensor | None,
                 min_confidence: float, step: int, full_confidence: Tensor | None) -> None:
        b, _, h, w = images.shape
        dev = images.device
        self.engine, self.images, self.target, self.min_confidence = engine, images, target.to(dev), min_confidence
        self.rank = pixel_rank(maps.to(dev), region)
        self.limit = region.flatten(1).sum(1) if region is not None else torch.full((b,), h * w, device=dev)
        self.step = step
        self.n = -(-self.limit // step)
        self.full_confidence, self.evaluated = full_image_confidence(engine, images, self.target, full_confidence)
        self.tested = torch.zeros(b, int(self.n.max()) + 2 if b else 2, dtype=torch.bool, device=dev)
        self.passed = torch.zeros_like(self.tested)

    def size(self, img: Tensor, j: Tensor) -> Tensor:
        """Pixels kept by prefixes j of images `img`."""
        return torch.minimum(j * self.step, self.limit[img])

    def fresh(self, img: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
        """The (image, prefix) pairs of candidates (A, k) of images `img` (A,) that exist and are not yet tested,
        each once."""
        cand = cand.sort(1).values
        ok = (cand >= 1) & (cand <= self.n[img, None])
        ok[:, 1:] &= cand[:, 1:] != cand[:, :-1]
        ok &= ~self.tested[img[:, None], cand.clamp(0, self.tested.shape[1] - 1)]
        row, col = ok.nonzero(as_tuple=True)
        return img[row], cand[row, col]

    def test(self, img: Tensor, j: Tensor) -> None:
        """Ask the model whether prefixes j (M,) of images `img` (M,) keep the target class (section 5.1)."""
        if len(img) == 0:
            return
        _, _, h, w = self.images.shape
        visible = (self.rank[img] < self.size(img, j)[:, None]).view(-1, h, w)
        probs = self.engine.masked_probabilities(self.images, img, visible)
        self.tested[img, j] = True
        self.passed[img, j] = passes(probs, self.target[img], self.full_confidence[img], self.min_confidence)
        self.evaluated.index_add_(0, img, torch.ones_like(img))

    def bounds(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """(hi, lo) of images `img`: the smallest passing tested prefix (n + 1 if none) and the largest failing
        tested prefix below it (0 if none)."""
        idx = torch.arange(self.tested.shape[1], device=img.device)
        hi = torch.where(self.passed[img], idx, torch.iinfo(torch.long).max).amin(1)
        hi = torch.minimum(hi, self.n[img] + 1)
        failed = self.tested[img] & ~self.passed[img] & (idx < hi[:, None])
        return hi, torch.where(failed, idx, 0).amax(1)

    def untested_below(self, img: Tensor, lo: Tensor, check: int | None) -> Tensor:
        """Up to `check` (None: all) untested prefixes (A, k) below `lo` (A,) of images `img`, nearest first;
        0 pads."""
        idx = torch.arange(self.tested.shape[1], device=img.device)
        key = torch.where(~self.tested[img] & (idx >= 1) & (idx < lo[:, None]), idx, 0)
        k = key.shape[1] if check is None else min(check, key.shape[1])
        return key.topk(k, dim=1).values

    def result(self) -> Extraction:
        """The smallest passing tested prefix of each image as a pixel mask; the whole region where none passed."""
        b, _, h, w = self.images.shape
        every = torch.arange(b, device=self.images.device)
        hi, _ = self.bounds(every)
        found = hi <= self.n
        size = torch.where(found, self.size(every, hi), self.limit)
        return Extraction(mask=(self.rank < size[:, None]).view(b, 1, h, w), found=found, evaluated=self.evaluated)


def extract(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    region: Tensor | None = None,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 1,
    check: int | None = 64,
) -> Extraction:
    """Algorithm 3, lines 10-17: the smallest prefix of the ranking (in steps of `step` pixels) whose masked image
    keeps the target class (with at least `min_confidence` x the full image's confidence). `candidates` prefix
    sizes per image and round, geometric first, then refined between the largest failing and the smallest passing
    size until they are adjacent; then up to `check` untested sizes below the failing one (nearest first; None:
    all) are tested, and the refinement restarts below the smallest that passes. The result is `scan`'s wherever
    no check had more than `check` untested sizes below it (always with `check` None)."""
    p = _Prefixes(engine, images, maps, target, region, min_confidence, step, full_confidence)
    active = (p.n > 0).nonzero()[:, 0]
    p.test(*p.fresh(active, _first_candidates(p.n[active], candidates)))
    checked_at = torch.zeros_like(p.n)
    j = torch.arange(1, candidates, device=images.device)[None]
    while active.numel() > 0:
        hi, lo = p.bounds(active)
        refine = hi - lo > 1
        go_on = refine | (checked_at[active] != hi)
        active, hi, lo, refine = active[go_on], hi[go_on], lo[go_on], refine[go_on]
        gap = (hi - lo)[refine, None]
        between = p.fresh(active[refine], lo[refine, None] + torch.ceil(gap * j / candidates).long())
        below = p.fresh(active[~refine], p.untested_below(active[~refine], lo[~refine], check))
        checked_at[active[~refine]] = hi[~refine]
        p.test(torch.cat([between[0], below[0]]), torch.cat([between[1], below[1]]))
    return p.result()


def scan(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    region: Tensor | None = None,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 1,
) -> Extraction:
    """Algorithm 3, lines 10-17 exhaustively: prefixes of 1, 2, ... steps of `step` pixels (rex-xai's chunk
    size, 10 there) tested in order, `candidates` per image and round, up to the first that keeps the target class
    (with at least `min_confidence` x the full image's confidence)."""
    p = _Prefixes(engine, images, maps, target, region, min_confidence, step, full_confidence)
    start = torch.ones_like(p.n)
    active = (p.n > 0).nonzero()[:, 0]
    offsets = torch.arange(candidates, device=images.device)[None]
    while active.numel() > 0:
        p.test(*p.fresh(active, start[active, None] + offsets))
        start[active] += candidates
        hi, _ = p.bounds(active)
        active = active[(hi > p.n[active]) & (start[active] <= p.n[active])]
    return p.result()


def prune(
    engine: QueryEngine,
    images: Tensor,
    extraction: Extraction,
    maps: Tensor,
    target: Tensor,
    cell: int,
    min_confidence: float = 0.0,
    full_confidence: Tensor | None = None,
) -> Extraction:
    """Section 3's minimality for a found explanation: one greedy pass over its `cell` x `cell` pixel cells, least
    responsible first (mean of `maps` (B, H, W) over the cell's kept pixels), dropping each cell without which the
    masked image still keeps the target class (with at least `min_confidence` x the full image's confidence). A
    prefix of the ranking is sufficient but need not be minimal; after the pass no cell was dropped that the class
    needed when it was tried. One model evaluation per cell tried (the n-th cells of all images in one batch); the
    last cell of an explanation is never tried; `evaluated` adds them to the extraction's."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    full_confidence, spent = full_image_confidence(engine, images, target, full_confidence)
    kept = extraction.mask[:, 0].clone()
    gw = -(-w // cell)
    cell_of = ((torch.arange(h, device=dev)[:, None] // cell) * gw + torch.arange(w, device=dev)[None] // cell)
    n_cells = int(cell_of.max()) + 1
    flat_kept = kept.flatten(1).double()
    count = torch.zeros(b, n_cells, dtype=torch.float64, device=dev).index_add_(1, cell_of.flatten(), flat_kept)
    total = torch.zeros_like(count).index_add_(1, cell_of.flatten(), flat_kept * maps.to(dev).flatten(1).double())
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.inf)
    order = torch.argsort(mean, dim=1, stable=True)
    tries = torch.where(extraction.found, (count > 0).sum(1), 0)
    evaluated = spent + (extraction.evaluated.to(dev) if extraction.evaluated is not None else 0)
    for t in range(int(tries.max()) if b else 0):
        img = (tries > t).nonzero()[:, 0]
        trial = kept[img] & (cell_of[None] != order[img, t, None, None])
        left = trial.flatten(1).any(1)
        img, trial = img[left], trial[left]
        if len(img) == 0:
            continue
        probs = engine.masked_probabilities(images, img, trial)
        ok = passes(probs, target[img], full_confidence[img], min_confidence)
        kept[img[ok]] = trial[ok]
        evaluated.index_add_(0, img, torch.ones_like(img))
    return Extraction(mask=kept[:, None], found=extraction.found, evaluated=evaluated)


def explanation_first(maps: Tensor, explanation: Tensor) -> Tensor:
    """Maps (B, H, W) whose ranking puts the pixels of `explanation` (B, 1, H, W) first, in their own order (raised
    by the map's range plus one), so that an explanation that is not a prefix of the ranking (after `prune`) is one
    again, as in Algorithm 3; the other pixels keep their values."""
    span = (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) + 1)[:, None, None]
    return maps + explanation[:, 0].to(maps.dtype) * span


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
    full_confidence: Tensor | None = None,
    step: int = 1,
    check: int | None = 64,
) -> Extraction:
    """Section 6.2: up to `k` sufficient explanations (B, k, 1, H, W) from one map, each extracted (`extract`) from
    the ranking with the pixels of the earlier ones excluded (all but their lowest `overlap` fraction, grown by
    `separation` pixels), so that later ones sit around other peaks of responsibility; `evaluated` counts every
    extraction's model evaluations per image."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    full_confidence, evaluated = full_image_confidence(engine, images, target, full_confidence)
    rank = pixel_rank(maps.to(dev)).view(b, h, w)
    allowed = torch.ones(b, h, w, dtype=torch.bool, device=dev)
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    masks, found = [], []
    for _ in range(k):
        ex = extract(engine, images, maps, target, allowed & alive[:, None, None], min_confidence, candidates,
                     full_confidence, step, check)
        evaluated += ex.evaluated
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
    return Extraction(mask=torch.stack(masks, 1), found=torch.stack(found, 1), evaluated=evaluated)
