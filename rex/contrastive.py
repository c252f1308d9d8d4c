"""Contrastive and complete explanations (rex-xai 0.4.1's `--contrastive` and `--complete`), batched over images.

Both walk the responsibility ranking `step` pixels at a time (the tool's chunk size, 10); their tests are not monotone
in the prefix size, so every image's steps are scanned in order, `candidates` steps per image and model call, and an
image stops at its first hit. `evaluated` counts the model evaluations per image.

Differences from the tool: with a batch size above 1 the tool keeps the last contrastive hit of a batch, here always
the first (the tool's default batch size of 1); the tool's complete search starts by adding a chunk even when the
contrastive explanation already has the full image's confidence to 2 decimals, here that explanation is complete
itself; the tool reports the added pixels alone as its complete mask, here `mask` is the whole complete explanation
(the contrastive core and the added pixels) and `contrastive` the core; where the sufficient explanation is the
whole image the tool reports no contrastive one, here the whole image counts when its removal (the blank image)
changes the class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from models.queries import QueryEngine
from rex.extraction import Extraction, full_image_confidence, pixel_rank

#: The tool compares confidences rounded to 4 decimals in its sufficiency and contrastive tests.
CONTRASTIVE_DECIMALS = 4


@dataclass(kw_only=True)
class Contrastive(Extraction):
    """Sufficient and necessary explanations `mask` (B, 1, H, W), whether found, the first sufficient prefix on the
    same step grid `sufficient` (B, 1, H, W), and the class (B,) of the image with `mask` removed (-1 where none)."""

    sufficient: Tensor
    removed_class: Tensor


@dataclass(kw_only=True)
class Complete(Extraction):
    """Complete explanations `mask` (B, 1, H, W) (the contrastive core and the added pixels), whether found, and the
    contrastive core `contrastive` (B, 1, H, W)."""

    contrastive: Tensor


def _scan(
    n_steps: Tensor, candidates: int, tests: int, probe: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """First step (B, tests) of 0 .. n_steps - 1 at which each of `probe`'s tests holds (-1 where none), scanning every
    image's steps in order, `candidates` per image and call (an image stops once its test 0 held), and the steps
    probed per image (B,)."""
    dev = n_steps.device
    never = torch.iinfo(torch.long).max
    first = torch.full((len(n_steps), tests), never, device=dev)
    probed = torch.zeros_like(n_steps)
    start = torch.zeros_like(n_steps)
    active = (n_steps > 0).nonzero()[:, 0]
    while active.numel() > 0:
        steps = start[active, None] + torch.arange(candidates, device=dev)[None]
        row, col = (steps < n_steps[active, None]).nonzero(as_tuple=True)
        step = steps[row, col]
        ok = probe(active[row], step)
        probed.index_add_(0, active[row], torch.ones_like(row))
        hit = torch.where(ok, step[:, None], never)
        first.scatter_reduce_(0, active[row, None].expand_as(hit), hit, "amin")
        start[active] += candidates
        active = active[(first[active, 0] == never) & (start[active] < n_steps[active])]
    return torch.where(first == never, -1, first), probed


def contrastive_extract(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 10,
) -> Contrastive:
    """rex-xai's `--contrastive`: the first prefix of the ranking (grown `step` pixels at a time) that alone keeps the
    target class with at least the full image's confidence (to 4 decimals) and whose removal from the full image
    changes the class: sufficient and necessary."""
    if step < 1:
        raise ValueError(f"step must be at least 1 pixel, got {step}")
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    full_confidence, evaluated = full_image_confidence(engine, images, target, full_confidence)
    rank = pixel_rank(maps.to(dev))
    full = torch.round(full_confidence, decimals=CONTRASTIVE_DECIMALS)
    least = torch.round(min_confidence * full_confidence, decimals=CONTRASTIVE_DECIMALS)

    def prefix(img: Tensor, j: Tensor) -> Tensor:
        return (rank[img] < (step * (j + 1)).clamp(max=h * w)[:, None]).view(-1, h, w)

    def probe(img: Tensor, j: Tensor) -> Tensor:
        visible = prefix(img, j)
        kept = engine.masked_probabilities(images, img, visible)
        removed = engine.masked_probabilities(images, img, ~visible)
        t = target[img]
        conf = torch.round(kept.gather(1, t[:, None])[:, 0], decimals=CONTRASTIVE_DECIMALS)
        keeps = kept.argmax(1) == t
        necessary = keeps & (conf >= full[img]) & (removed.argmax(1) != t)
        return torch.stack([necessary, keeps & (conf >= least[img])], 1)

    n_steps = torch.full((b,), -(-h * w // step), device=dev)
    first, probed = _scan(n_steps, candidates, 2, probe)
    found = first[:, 0] >= 0
    idx = torch.arange(b, device=dev)
    mask = prefix(idx, first[:, 0]) & found[:, None, None]
    sufficient = prefix(idx, first[:, 1]) & (first[:, 1] >= 0)[:, None, None]
    removed_class = torch.full((b,), -1, dtype=torch.long, device=dev)
    hit = found.nonzero()[:, 0]
    if hit.numel() > 0:
        removed_class[hit] = engine.masked_probabilities(images, hit, ~mask[hit]).argmax(1)
    return Contrastive(mask=mask[:, None], found=found, evaluated=evaluated + 2 * probed + found.long(),
                       sufficient=sufficient[:, None], removed_class=removed_class)


def complete_extract(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 10,
    decimals: int = 2,
) -> Complete:
    """rex-xai's `--complete`: the contrastive explanation, then pixels from the low end of the ranking added `step`
    at a time until the target class comes back with the full image's confidence (equal to `decimals` decimals)."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    full_confidence, evaluated = full_image_confidence(engine, images, target, full_confidence)
    con = contrastive_extract(engine, images, maps, target, min_confidence, candidates, full_confidence, step)
    rank = pixel_rank(maps.to(dev))
    core = con.mask.flatten(1)
    free = h * w - core.sum(1)
    goal = torch.round(full_confidence, decimals=decimals)

    def grown(img: Tensor, j: Tensor) -> Tensor:
        return (core[img] | (rank[img] >= h * w - (step * j).minimum(free[img])[:, None])).view(-1, h, w)

    def probe(img: Tensor, j: Tensor) -> Tensor:
        probs = engine.masked_probabilities(images, img, grown(img, j))
        t = target[img]
        conf = torch.round(probs.gather(1, t[:, None])[:, 0], decimals=decimals)
        return ((probs.argmax(1) == t) & (conf == goal[img]))[:, None]

    n_steps = torch.where(con.found, -(-free // step) + 1, 0)
    first, probed = _scan(n_steps, candidates, 1, probe)
    found = first[:, 0] >= 0
    mask = grown(torch.arange(b, device=dev), first[:, 0].clamp(min=0)) & found[:, None, None]
    return Complete(mask=mask[:, None], found=found, evaluated=evaluated + con.evaluated + probed,
                    contrastive=con.mask)
