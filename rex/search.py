"""Iterative refinement (Algorithm 2) of N random partitions averaged into a pixel map (Algorithm 3, lines 1-9).

All N searches of all images run together, level by level: one level's mutants are built at once from
per-pixel child labels and go to the model in chunks of `max_batch`. The returned map holds, for every
superpixel P the refinement visited at any level, R(P) / |P| on its pixels, averaged over the N partitions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.queries import QueryEngine
from rex.partition import SplitDistribution, box_area, box_masks, quadrant_labels, split_boxes
from rex.responsibility import MUTANT_SUBSETS, N_PARTS, VISIBLE, ResponsibilityRule, responsibility, subset_outcomes

#: Label of held-constant pixels: bit 5 of every mutant code is set, so they are visible in all 14 mutants;
#: `quadrant_labels` gives 4 outside the box, whose bit is clear, so those pixels are masked.
_HELD = 5
#: Mutant visibility masks are built at least this many pixels (and `max_batch` mutants) at a time, then sent to
#: the model in `max_batch` chunks; 4 M stays in cache on CPU (measured 15 % faster than 16 M for a linear model).
_CHUNK_PIXELS = 1 << 22


@dataclass
class _Tasks:
    """Boxes to refine (section 5.2): search id, held-constant context pixels, box and known outcomes."""

    search: Tensor
    context: Tensor
    box: Tensor
    empty_pass: Tensor
    full_pass: Tensor


def passes(probs: Tensor, target: Tensor, full_confidence: Tensor, confidence_filter: float) -> Tensor:
    """Section 5.1: a mutant passes when it keeps the target class (and `confidence_filter` of its confidence)."""
    conf = probs.gather(1, target[:, None])[:, 0]
    return (probs.argmax(1) == target) & (conf >= confidence_filter * full_confidence)


def _add_boxes(diff: Tensor, image: Tensor, boxes: Tensor, values: Tensor) -> None:
    """Add `values` on the pixels of `boxes` (K, 4) of maps `image` (K,) via a 2-D difference array."""
    r0, r1, c0, c1 = (boxes[:, i].to(diff.device) for i in range(4))
    v = values.to(diff)
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        diff.index_put_((image, rows, cols), sign * v, accumulate=True)


def responsibility_map(
    engine: QueryEngine,
    images: Tensor,
    target: Tensor,
    generator: torch.Generator,
    n_partitions: int = 20,
    min_size: int = 10,
    queue_len: int = 1,
    rule: ResponsibilityRule = "paper",
    distribution: SplitDistribution = "uniform",
    dist_args: tuple[float, ...] = (),
    confidence_filter: float = 0.0,
    work_budget: int | None = None,
    cache: bool = True,
    counts: dict[str, Tensor] | None = None,
) -> Tensor:
    """Algorithms 2-3: responsibility maps (B, H, W) averaged over `n_partitions` refined random partitions.

    With `cache`, a mutant whose mask was already evaluated for the same image (repeats across partitions and
    levels, children split to nothing) is answered from the cache, not the model: the maps are identical.
    `counts`, when given, receives per image the mutants "evaluated" by the model and "answered" from the cache."""
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    blank = engine.blank(images)
    probs = engine.probabilities(torch.cat([images, blank]))
    full_confidence = probs[:b].gather(1, target[:, None])[:, 0]
    full_ok = passes(probs[:b], target, full_confidence, confidence_filter)
    empty_ok = passes(probs[b:], target, full_confidence, confidence_filter)

    n_search = b * n_partitions
    image_of = torch.arange(n_search, device=dev) // n_partitions
    tasks = _Tasks(
        search=torch.arange(n_search, device=dev),
        context=torch.zeros(n_search, h, w, dtype=torch.bool, device=dev),
        box=torch.tensor([0, h, 0, w]).repeat(n_search, 1),
        empty_pass=empty_ok[image_of],
        full_pass=full_ok[image_of],
    )
    work = torch.zeros(n_search, dtype=torch.long, device=dev)
    memo: dict[tuple[int, bytes], bool] = {}
    answered = torch.zeros(b, dtype=torch.long)
    diff = torch.zeros(b, h + 1, w + 1, dtype=torch.float64, device=dev)
    codes = (MUTANT_SUBSETS | 1 << _HELD).to(dev, torch.uint8)[None, :, None, None]
    n_mut = len(MUTANT_SUBSETS)
    per_chunk = max(1, _CHUNK_PIXELS // (n_mut * h * w), -(-engine.max_batch // n_mut))

    while tasks.search.numel() > 0:
        children = split_boxes(tasks.box, generator, distribution, dist_args)
        labels = torch.where(tasks.context, _HELD, quadrant_labels(children, h, w, dev))
        mutant_pass = []
        for start in range(0, len(children), per_chunk):
            sl = slice(start, start + per_chunk)
            visible = ((codes >> labels[sl, None]) & 1 == 1).flatten(0, 1)
            img = image_of[tasks.search[sl]].repeat_interleave(n_mut)
            ok = _cached_passes(engine, images, img, visible, target, full_confidence, confidence_filter,
                                memo if cache else None, answered)
            mutant_pass.append(ok.view(-1, n_mut))
        outcomes = subset_outcomes(torch.cat(mutant_pass), tasks.empty_pass, tasks.full_pass)
        resp = responsibility(outcomes, rule)

        area = box_area(children).to(dev)
        img = image_of[tasks.search].repeat_interleave(N_PARTS)
        _add_boxes(diff, img, children.flatten(0, 1), (resp / area.clamp(min=1)).flatten())

        work.index_add_(0, tasks.search, torch.full_like(tasks.search, n_mut))
        go_on = resp.amax(1) - resp.amin(1) > 1e-12
        if work_budget is not None:
            go_on &= work[tasks.search] < work_budget
        tasks = _next_tasks(tasks, children, area, outcomes, go_on, queue_len, min_size, h, w)

    if counts is not None:
        mutants = torch.zeros(b, dtype=torch.long).index_add_(0, image_of.cpu(), work.cpu())
        counts["evaluated"], counts["answered"] = mutants - answered, answered
    return (diff.cumsum(1).cumsum(2)[:, :h, :w] / n_partitions).float()


def _cached_passes(
    engine: QueryEngine, images: Tensor, img: Tensor, visible: Tensor, target: Tensor, full_confidence: Tensor,
    confidence_filter: float, memo: dict[tuple[int, bytes], bool] | None, answered: Tensor,
) -> Tensor:
    """Section 5.1's pass test of mutants (image `img`, mask `visible`), the model asked only for masks not seen
    before for that image (`memo`: (image, packed mask) -> passed); `answered` counts the others per image."""
    if memo is None:
        p = engine.masked_probabilities(images, img, visible)
        return passes(p, target[img], full_confidence[img], confidence_filter)
    packed = np.packbits(visible.flatten(1).cpu().numpy(), axis=1)
    keys = [(int(i), row.tobytes()) for i, row in zip(img.tolist(), packed)]
    new: dict[tuple[int, bytes], int] = {}
    for k, key in enumerate(keys):
        if key not in memo and key not in new:
            new[key] = k
    rows = torch.tensor(list(new.values()), dtype=torch.long, device=visible.device)
    if len(rows):
        p = engine.masked_probabilities(images, img[rows], visible[rows])
        memo.update(zip(new, passes(p, target[img[rows]], full_confidence[img[rows]], confidence_filter).tolist()))
    answered.index_add_(0, img.cpu(), torch.ones(len(img), dtype=torch.long))
    answered.index_add_(0, img[rows].cpu(), -torch.ones(len(rows), dtype=torch.long))
    return torch.tensor([memo[key] for key in keys], device=visible.device)


def _next_tasks(
    tasks: _Tasks, children: Tensor, area: Tensor, outcomes: Tensor, go_on: Tensor, queue_len: int, min_size: int,
    h: int, w: int,
) -> _Tasks:
    """Algorithm 2, lines 5-8 with section 5.2: queue the `queue_len` smallest passing mutants of each search
    and refine each of their superpixels while the others stay at their original values."""
    dev = tasks.context.device
    subsets = MUTANT_SUBSETS.to(dev)
    vis = VISIBLE.to(dev)[subsets]
    t_count = len(children)
    cand = outcomes[:, subsets] & go_on[:, None] & ((area[:, None, :] > 0) | ~vis[None]).all(2)
    size = tasks.context.flatten(1).sum(1)[:, None] + area @ vis.long().T
    key = torch.where(cand, size, torch.iinfo(torch.long).max).flatten()
    search = tasks.search[:, None].expand(-1, len(subsets)).flatten()
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(search[order], stable=True)]
    grouped = search[order]
    first = torch.searchsorted(grouped, grouped, side="left")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=dev) - first
    chosen = (cand.flatten() & (rank < queue_len)).view(t_count, len(subsets))

    t_idx, s_idx = chosen.nonzero(as_tuple=True)
    subset = subsets[s_idx]
    pair, part = vis[s_idx].nonzero(as_tuple=True)
    t_idx, subset = t_idx[pair], subset[pair]
    new_box = children.to(dev)[t_idx, part]
    keep = box_area(new_box) >= min_size
    t_idx, subset, part, new_box = t_idx[keep], subset[keep], part[keep], new_box[keep]
    held = VISIBLE.to(dev)[subset].clone()
    held[torch.arange(len(t_idx), device=dev), part] = False
    parts = box_masks(children.to(dev)[t_idx], h, w, dev)
    context = tasks.context[t_idx] | (parts & held[:, :, None, None]).any(1)
    return _Tasks(
        search=tasks.search[t_idx],
        context=context,
        box=new_box.cpu(),
        empty_pass=outcomes[t_idx, subset ^ (1 << part)],
        full_pass=outcomes[t_idx, subset],
    )
