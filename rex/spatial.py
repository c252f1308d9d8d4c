"""Spatial extraction (rex-xai 0.4.1's `spatial` strategy): a circle around the map's maximum, grown until the image
inside it alone keeps the class, then the global extraction (Algorithm 3, lines 10-17) restricted to that circle.

Differences from the tool: its radius update `int(r * (1 + growth))` stalls below r = 5 (an endless loop there),
here every step grows the radius by at least one pixel; the tool stops without an explanation once a circle covers
the whole image, here that circle (the full image) is tested too, so a spatial explanation exists wherever a global
one does; the tool ranks the pixels of the whole image with the map set to 0 outside the circle (zero-responsibility
pixels outside can come before those inside), here only the circle's pixels are ranked; the tool tests one circle
at a time, here all circles of all images go to the model together (a few evaluations more, one round).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from models.queries import QueryEngine
from rex.extraction import Extraction, extract, full_image_confidence
from rex.search import passes


def circle_masks(centre: Tensor, radius: Tensor, h: int, w: int) -> Tensor:
    """rex-xai's spatial circle: the pixels (N, H, W) within Euclidean distance `radius` (N,) of `centre` (N, 2)
    (row, column)."""
    rows = torch.arange(h, device=centre.device)[None, :, None]
    cols = torch.arange(w, device=centre.device)[None, None, :]
    dist2 = (rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2
    return dist2 <= (radius.to(centre.device) ** 2)[:, None, None]


def _radii(radius: int, growth: float, limit: float, count: int | None) -> list[int]:
    """The tool's radius sequence r, int(r * (1 + growth)), ... (at least one pixel more per step): `count` radii,
    or fewer where one reaches `limit` (a circle that covers the image from any centre)."""
    radii = [radius]
    while radii[-1] < limit and (count is None or len(radii) < count):
        radii.append(max(radii[-1] + 1, int(radii[-1] * (1 + growth))))
    return radii


def sufficient_circles(
    engine: QueryEngine,
    images: Tensor,
    img: Tensor,
    centre: Tensor,
    target: Tensor,
    full_confidence: Tensor,
    min_confidence: float = 0.0,
    radius: int = 25,
    growth: float = 0.2,
    expansions: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """rex-xai's spatial search: for each search n (image `img[n]`, centre `centre[n]`), the first of its growing
    circles (at most `expansions`, None = until one covers the image) whose pixels alone keep the target class with
    `min_confidence` x the full image's confidence, as a mask (N, H, W), whether one does (N,) and the circles the
    model evaluated (N,); all circles of all searches go to the model together."""
    if radius < 1 or growth < 0 or (expansions is not None and expansions < 1):
        raise ValueError(f"spatial search needs radius >= 1, growth >= 0 and expansions >= 1 (or None); got "
                         f"radius={radius}, growth={growth}, expansions={expansions}")
    h, w = images.shape[-2:]
    dev = images.device
    centre = centre.to(dev)
    radii = torch.tensor(_radii(radius, growth, math.hypot(h - 1, w - 1), expansions), device=dev)
    corners = torch.tensor([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], device=dev)
    cover = ((centre[:, None] - corners[None]) ** 2).sum(2).amax(1)
    tried = torch.ones(len(centre), len(radii), dtype=torch.bool, device=dev)
    tried[:, 1:] = radii[None, :-1] ** 2 < cover[:, None]
    n, j = tried.nonzero(as_tuple=True)
    probs = engine.masked_probabilities(images, img[n], circle_masks(centre[n], radii[j], h, w))
    ok = passes(probs, target[img[n]], full_confidence[img[n]], min_confidence)
    none = len(radii)
    first = torch.full((len(centre),), none, device=dev).scatter_reduce(0, n[ok], j[ok], "amin")
    found = first < none
    circle = circle_masks(centre, radii[first.clamp(max=none - 1)], h, w) & found[:, None, None]
    return circle, found, tried.sum(1)


def spatial_extract(
    engine: QueryEngine,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    min_confidence: float = 0.0,
    candidates: int = 32,
    full_confidence: Tensor | None = None,
    step: int = 1,
    check: int | None = 64,
    radius: int = 25,
    growth: float = 0.2,
) -> Extraction:
    """rex-xai's spatial explanation: a circle of `radius` pixels around each map's maximum (first on ties), grown by
    `growth` (20 %) per step until its pixels alone keep the class, then the smallest sufficient prefix of the map's
    ranking inside it (Algorithm 3, lines 10-17, in steps of `step` pixels, see `extract`)."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    maps = maps.to(dev)
    full_confidence, evaluated = full_image_confidence(engine, images, target, full_confidence)
    peak = maps.flatten(1).argmax(1)
    centre = torch.stack([peak // w, peak % w], 1)
    circle, _, circles = sufficient_circles(engine, images, torch.arange(b, device=dev), centre, target,
                                            full_confidence, min_confidence, radius, growth)
    ex = extract(engine, images, maps, target, circle, min_confidence, candidates, full_confidence, step, check)
    return Extraction(mask=ex.mask, found=ex.found, evaluated=evaluated + circles + ex.evaluated)
