"""Iterative refinement (Algorithm 2) of N random partitions combined into a pixel map (Algorithm 3, lines 1-9).

All N searches of all images run together, level by level: one level's mutants are built at once from
per-pixel child labels and go to the model in chunks of `max_batch`. A partition's map holds, for every
superpixel P the refinement visited at any level, R(P) / |P| on its pixels; the returned map is their average
over the N partitions (or their product, as the public tool). With N = "auto" the partitions run in waves and an
image stops once its map is stable (see `responsibility_map`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from models.queries import QueryEngine
from rex.partition import SplitDistribution, box_area, box_masks, quadrant_labels, split_boxes
from rex.responsibility import (
    FULL, MUTANT_SUBSETS, N_PARTS, VISIBLE, implied_outcomes, non_monotone, responsibility, subset_outcomes,
)

#: Label of held-constant pixels: bit 5 of every mutant code is set, so they are visible in all 14 mutants;
#: `quadrant_labels` gives 4 outside the box, whose bit is clear, so those pixels are masked.
_HELD = 5
#: Mutant visibility masks are built at least this many pixels (and `max_batch` mutants) at a time, then sent to
#: the model in `max_batch` chunks; 4 M stays in cache on CPU (measured 15 % faster than 16 M for a linear model).
_CHUNK_PIXELS = 1 << 22
#: Algorithm 2's queue: the smallest passing mutant of each split is refined (section 6.1's queue of length 1).
_QUEUE_LEN = 1
#: `n_partitions` "auto": waves of 5 partitions, an image stops when the first 10 % of its map's ranking has
#: IoU >= 0.9 with the previous wave's, at most 40 partitions (rex_vs_rexxai.md: it settles at 10-15 on the
#: synthetic models, so the cap of twice the paper's N = 20 is rarely reached).
AUTO_WAVE, AUTO_MAX, AUTO_TOP, AUTO_IOU = 5, 40, 0.1, 0.9
#: Focused refinement starts from the bounding box of the map's first 5 % of pixels (the share of the image the
#: synthetic scenes' target objects cover, rex_vs_rexxai.md).
FOCUS_TOP = 0.05

Combination = Literal["average", "multiplicative"]


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How the responsibility map is searched (Algorithms 2-3); `rex.presets` names the two settings a user picks.

    `n_partitions` N random partitions (or "auto", see `responsibility_map`), each refined down to superpixels of
    `min_size` pixels, split points drawn `distribution` ("uniform": the paper; "binom": near the box centre).
    `area_share` True is Algorithm 3, line 6 (each pixel of P gets R(P) / |P|); False gives each pixel the whole
    R(P), as rex-xai 0.4.1. `focus_after` k (None: off) starts the partitions after the first k from the box of
    the map's first `FOCUS_TOP` pixels, refined down to `focus_min_size` (h-Shap's focused refinement).
    `monotone` asks only about mutants whose outcome does not follow from others' (Observation 4.6).
    `blank_fails` reads an image whose blank image keeps the class as rex-xai does (the blank image fails), where
    the paper's reading gives a zero map. `combination` "average" is Algorithm 3, "multiplicative" rex-xai's.
    `cache` answers a mutant already evaluated for the same image from memory (identical maps)."""

    n_partitions: int | Literal["auto"] = 20
    min_size: int = 10
    distribution: SplitDistribution = "uniform"
    area_share: bool = True
    focus_after: int | None = None
    focus_min_size: int | None = None
    monotone: bool = False
    blank_fails: bool = False
    combination: Combination = "average"
    cache: bool = True

    def __post_init__(self) -> None:
        """Clear errors for values the search cannot use."""
        if isinstance(self.n_partitions, str) and self.n_partitions != "auto":
            raise ValueError(f"n_partitions must be a positive int or 'auto', not {self.n_partitions!r}")
        if not isinstance(self.n_partitions, str) and (isinstance(self.n_partitions, bool) or self.n_partitions < 1):
            raise ValueError(f"n_partitions must be a positive int or 'auto', not {self.n_partitions!r}")
        if self.focus_after is not None and self.focus_after < 1:
            raise ValueError(f"focus_after must be None or at least 1, not {self.focus_after}")
        if self.combination not in ("average", "multiplicative"):
            raise ValueError(f"unknown combination {self.combination!r}; known: 'average', 'multiplicative'")
        if self.distribution not in ("uniform", "binom", "betabinom"):
            raise ValueError(f"unknown split distribution {self.distribution!r}; known: uniform, binom, betabinom")


@dataclass
class _Tasks:
    """Boxes to refine (section 5.2): search id, held-constant context pixels, box and known outcomes."""

    search: Tensor
    context: Tensor
    box: Tensor
    empty_pass: Tensor
    full_pass: Tensor


def passes(probs: Tensor, target: Tensor, full_confidence: Tensor, min_confidence: float) -> Tensor:
    """Section 5.1: a masked image passes when it keeps the target class (and `min_confidence` x the full image's
    confidence `full_confidence`)."""
    conf = probs.gather(1, target[:, None])[:, 0]
    return (probs.argmax(1) == target) & (conf >= min_confidence * full_confidence)


def _add_boxes(diff: Tensor, image: Tensor, boxes: Tensor, values: Tensor) -> None:
    """Add `values` on the pixels of `boxes` (K, 4) of maps `image` (K,) via a 2-D difference array."""
    r0, r1, c0, c1 = (boxes[:, i].to(diff.device) for i in range(4))
    v = values.to(diff)
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        diff.index_put_((image, rows, cols), sign * v, accumulate=True)


def _integrate(diff: Tensor) -> Tensor:
    """Maps (K, H, W) from their 2-D difference arrays (K, H + 1, W + 1)."""
    return diff.cumsum(1).cumsum(2)[:, :-1, :-1]


class _Combined:
    """Algorithm 3, lines 5-8: each image's partition maps combined. "average" (the paper) sums them in a 2-D
    difference array and divides by their number; "multiplicative" (rex-xai 0.4.1's default) multiplies 1 + each
    partition's map into a product renormalised to max 1, kept as a sum of logarithms: exp(sum - max of sum)."""

    def __init__(self, style: Combination, b: int, h: int, w: int, device: torch.device) -> None:
        if style not in ("average", "multiplicative"):
            raise ValueError(f"unknown combination {style!r}; known: 'average', 'multiplicative'")
        self.style = style
        shape = (b, h + 1, w + 1) if style == "average" else (b, h, w)
        self.total = torch.zeros(shape, dtype=torch.float64, device=device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, search: Tensor, image: Tensor, boxes: Tensor, values: Tensor) -> None:
        """Add `values` (R(P) / |P|) on boxes P (K, 4) of searches `search` (K,) of images `image` (K,)."""
        if self.style == "average":
            _add_boxes(self.total, image, boxes, values)
        else:
            self.pending.append((search, boxes.to(values.device), values))

    def end_wave(self, image_of: Tensor) -> None:
        """Multiply the finished searches' 1 + map into their images' products (search s explains `image_of[s]`)."""
        if self.style == "average" or not self.pending:
            return
        search, boxes, values = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending = []
        _, h, w = self.total.shape
        per = max(1, _CHUNK_PIXELS // ((h + 1) * (w + 1)))
        for start in range(0, len(image_of), per):
            n = min(per, len(image_of) - start)
            sel = (search >= start) & (search < start + n)
            diff = torch.zeros(n, h + 1, w + 1, dtype=torch.float64, device=self.total.device)
            _add_boxes(diff, search[sel] - start, boxes[sel], values[sel])
            self.total.index_add_(0, image_of[start:start + n], torch.log1p(_integrate(diff)))

    def maps(self, used: Tensor) -> Tensor:
        """Combined maps (B, H, W) float64 of images that used `used` (B,) partitions."""
        if self.style == "average":
            return _integrate(self.total) / used[:, None, None]
        return torch.exp(self.total - self.total.flatten(1).amax(1)[:, None, None])


@dataclass
class _Searcher:
    """Algorithm 2 for many random partitions at once, section 5.1's pass test answered from `memo` when cached."""

    engine: QueryEngine
    images: Tensor
    target: Tensor
    full_ok: Tensor
    empty_ok: Tensor
    generator: torch.Generator
    combined: _Combined
    settings: SearchSettings
    memo: dict[tuple[int, bytes], bool] | None
    answered: Tensor
    inferred: Tensor
    broken: Tensor

    def run(self, image_of: Tensor, start: tuple[Tensor, Tensor] | None = None, min_size: int | None = None) -> Tensor:
        """Algorithm 2 on one random partition of image `image_of[s]` per search s, all together level by level,
        of the whole image or of `start` = (boxes (S, 4), whether each box alone passes (S,)), everything outside
        masked, down to superpixels of `min_size` (None: the settings'); returns the mutants (work) each search
        built."""
        _, _, h, w = self.images.shape
        dev = self.images.device
        cfg = self.settings
        n_search = len(image_of)
        box, full_pass = start if start is not None else (torch.tensor([0, h, 0, w]).repeat(n_search, 1),
                                                           self.full_ok[image_of])
        tasks = _Tasks(
            search=torch.arange(n_search, device=dev),
            context=torch.zeros(n_search, h, w, dtype=torch.bool, device=dev),
            box=box.cpu(),
            empty_pass=self.empty_ok[image_of],
            full_pass=full_pass.to(dev),
        )
        work = torch.zeros(n_search, dtype=torch.long, device=dev)
        while tasks.search.numel() > 0:
            children = split_boxes(tasks.box, self.generator, cfg.distribution)
            labels = torch.where(tasks.context, _HELD, quadrant_labels(children, h, w, dev))
            if cfg.monotone:
                mutant_pass = self._monotone_passes(image_of[tasks.search], labels, tasks.empty_pass, tasks.full_pass)
            else:
                mutant_pass = self._level_passes(image_of[tasks.search], labels)
            outcomes = subset_outcomes(mutant_pass, tasks.empty_pass, tasks.full_pass)
            resp = responsibility(outcomes)

            area = box_area(children).to(dev)
            search = tasks.search.repeat_interleave(N_PARTS)
            values = resp / area.clamp(min=1) if cfg.area_share else resp
            self.combined.add(search, image_of[search], children.flatten(0, 1), values.flatten())

            work.index_add_(0, tasks.search, torch.full_like(tasks.search, mutant_pass.shape[1]))
            if not cfg.monotone:
                img_of_task = image_of[tasks.search].cpu()
                self.broken.index_add_(0, img_of_task, torch.stack([non_monotone(outcomes).long().cpu(),
                                                                    torch.ones_like(img_of_task)], 1))
            go_on = resp.amax(1) - resp.amin(1) > 1e-12
            tasks = _next_tasks(tasks, children, area, outcomes, go_on, min_size or cfg.min_size, h, w)
        self.combined.end_wave(image_of)
        return work

    def focus(self, image: Tensor, maps: Tensor, top: float) -> tuple[Tensor, Tensor]:
        """Focused refinement (h-Shap's pruning of irrelevant regions): the bounding box (A, 4) of the first `top`
        of the ranking of each image's map so far (A, H, W) and whether that box alone passes; the whole image where
        it does not. One mutant per image, through the cache."""
        _, _, h, w = self.images.shape
        boxes = bounding_boxes(_top_pixels(maps, top).view(-1, h, w)).cpu()
        visible = box_masks(boxes, h, w, self.images.device)
        ok = _cached_passes(self.engine, self.images, image, visible, self.target, self.memo, self.answered)
        whole = torch.tensor([0, h, 0, w]).expand_as(boxes)
        return torch.where(ok.cpu()[:, None], boxes, whole), ok | self.full_ok[image]

    def _level_passes(self, img: Tensor, labels: Tensor) -> Tensor:
        """Section 5.1's pass outcomes (T, 14) of the 14 mutants of each split box of image `img` (T,), from the
        child labels (T, H, W) of its pixels."""
        t_count, n_mut = len(labels), len(MUTANT_SUBSETS)
        task = torch.arange(t_count, device=labels.device).repeat_interleave(n_mut)
        subset = MUTANT_SUBSETS.to(labels.device).repeat(t_count)
        return self._subset_passes(img, labels, task, subset).view(t_count, n_mut)

    def _monotone_passes(self, img: Tensor, labels: Tensor, empty_pass: Tensor, full_pass: Tensor) -> Tensor:
        """`_level_passes` read monotonically (`rex.responsibility.implied_outcomes`): rounds that each ask the
        model about the undecided mutants keeping the most superpixels, until the outcomes of the others follow;
        `inferred` counts the mutants decided without the model per image."""
        t_count, dev = len(labels), labels.device
        known = torch.zeros(t_count, 2**N_PARTS, dtype=torch.bool, device=dev)
        value = torch.zeros_like(known)
        known[:, [0, FULL]] = True
        value[:, 0], value[:, FULL] = empty_pass.to(dev), full_pass.to(dev)
        n_visible = VISIBLE.to(dev).sum(1)
        while True:
            decided, outcome = implied_outcomes(known, value)
            if decided.all():
                break
            most = torch.where(decided, -1, n_visible).amax(1, keepdim=True)
            task, subset = (~decided & (n_visible == most)).nonzero(as_tuple=True)
            value[task, subset] = self._subset_passes(img, labels, task, subset)
            known[task, subset] = True
        mutants = MUTANT_SUBSETS.to(dev)
        self.inferred.index_add_(0, img.cpu(), (~known[:, mutants]).sum(1).cpu())
        return outcome[:, mutants]

    def _subset_passes(self, img: Tensor, labels: Tensor, task: Tensor, subset: Tensor) -> Tensor:
        """Pass outcomes (K,) of the mutants keeping superpixel subsets `subset` (K,) of split boxes `task` (K,)
        (image `img[task]`, child labels `labels[task]`); masks built and sent to the model a chunk at a time."""
        _, _, h, w = self.images.shape
        codes = (subset | 1 << _HELD).to(torch.uint8)
        per_chunk = max(1, _CHUNK_PIXELS // (h * w), self.engine.max_batch)
        out = []
        for start in range(0, len(task), per_chunk):
            t, c = task[start:start + per_chunk], codes[start:start + per_chunk]
            visible = (c[:, None, None] >> labels[t]) & 1 == 1
            out.append(_cached_passes(self.engine, self.images, img[t], visible, self.target, self.memo,
                                      self.answered))
        return torch.cat(out)


def _top_pixels(maps: Tensor, fraction: float) -> Tensor:
    """The ceil(`fraction` x H x W) first pixels (B, H * W) bool of Algorithm 3's ranking of `maps` (B, H, W):
    highest first, ties by pixel index."""
    flat = maps.flatten(1)
    k = max(1, math.ceil(fraction * flat.shape[1]))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def bounding_boxes(masks: Tensor) -> Tensor:
    """Smallest boxes (B, 4) = (r0, r1, c0, c1) holding the True pixels of `masks` (B, H, W) (not all empty)."""
    rows, cols = masks.any(2).int(), masks.any(1).int()
    return torch.stack([rows.argmax(1), rows.shape[1] - rows.flip(1).argmax(1),
                        cols.argmax(1), cols.shape[1] - cols.flip(1).argmax(1)], 1)


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union (B,) of pixel sets (B, N) bool; 0 where both are empty."""
    return (a & b).sum(1) / (a | b).sum(1).clamp(min=1)


def responsibility_map(
    engine: QueryEngine,
    images: Tensor,
    target: Tensor,
    generator: torch.Generator,
    settings: SearchSettings = SearchSettings(),
    *,
    full_probs: Tensor | None = None,
    counts: dict[str, Tensor] | None = None,
) -> Tensor:
    """Algorithms 2-3: responsibility maps (B, H, W) combined over `settings.n_partitions` refined random partitions.

    `n_partitions` "auto" runs partitions in waves of `AUTO_WAVE` (each wave all remaining images' searches
    together) and stops an image after a wave once the first ceil(`AUTO_TOP` x H x W) pixels of its combined map's
    ranking have IoU >= `AUTO_IOU` with those after its previous wave (so at least two waves), or at `AUTO_MAX`;
    its map is combined over the partitions it used.
    `focus_after` k: partitions after the first k start from the bounding box of the map's first ceil(`FOCUS_TOP` x
    H x W) pixels so far, everything outside masked, instead of the whole image (which they use where that box alone
    does not keep the class), refined down to `focus_min_size` pixels (None: `min_size`); with a fixed N the first
    k and the other N - k partitions run as two waves, with "auto" waves stop at k.
    With `cache`, a mutant whose mask was already evaluated for the same image (repeats across partitions, levels
    and waves, children split to nothing) is answered from the cache, not the model: the maps are identical.
    `monotone` reads each split by Observation 4.6 (`implied_outcomes`: a mutant keeping more superpixels than a
    passing one passes, fewer than a failing one fails): the model is asked about the mutants keeping the most
    superpixels first and the outcomes that follow from theirs are not asked for; the maps equal the full
    evaluation's for a monotone model.
    `blank_fails` reads an image whose blank image (every pixel masked) already gets the target class as rex-xai
    0.4.1 does, which never asks about the empty mutant: the blank image counts as failing, so the superpixels of
    passing mutants get responsibility (the paper's reading gives such an image a zero map).
    `counts`, when given, receives per image the mutants "evaluated" by the model, "answered" from the cache and
    "inferred" by `monotone`, and the "partitions" used; without `monotone`, also the "splits" refined and how many
    of them were "non_monotone" (`rex.responsibility.non_monotone`: how far the model is from what `monotone`
    assumes). `full_probs` (B, classes), the model's probabilities on the full images when the caller has them,
    saves asking for them again."""
    cfg = settings
    n_partitions = cfg.n_partitions
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    if full_probs is None:
        probs = engine.probabilities(torch.cat([images, engine.blank(images)]))
    else:
        probs = torch.cat([full_probs.to(dev), engine.probabilities(engine.blank(images))])
    keeps = probs.argmax(1) == torch.cat([target, target])
    combined = _Combined(cfg.combination, b, h, w, dev)
    searcher = _Searcher(
        engine, images, target, keeps[:b], keeps[b:] & (not cfg.blank_fails), generator, combined, cfg,
        {} if cfg.cache else None, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
        torch.zeros(b, 2, dtype=torch.long),
    )
    used = torch.zeros(b, dtype=torch.long, device=dev)
    mutants = torch.zeros(b, dtype=torch.long, device=dev)
    top = torch.zeros(b, h * w, dtype=torch.bool, device=dev)
    active = torch.arange(b, device=dev)
    while active.numel() > 0:
        done = int(used[active[0]])
        n = n_partitions - done if n_partitions != "auto" else min(AUTO_WAVE, AUTO_MAX - done)
        start, min_size = None, None
        if cfg.focus_after is not None and done < cfg.focus_after:
            n = min(n, cfg.focus_after - done)
        elif cfg.focus_after is not None:
            boxes, box_pass = searcher.focus(active, combined.maps(used)[active], FOCUS_TOP)
            mutants.index_add_(0, active, torch.ones_like(active))
            start, min_size = (boxes.repeat_interleave(n, 0), box_pass.repeat_interleave(n)), cfg.focus_min_size
        image_of = active.repeat_interleave(n)
        mutants.index_add_(0, image_of, searcher.run(image_of, start, min_size))
        used[active] += n
        if n_partitions != "auto":
            active = active[used[active] < n_partitions]
            continue
        now = _top_pixels(combined.maps(used)[active], AUTO_TOP)
        settled = _iou(now, top[active]) >= AUTO_IOU
        top[active] = now
        active = active[~settled & (used[active] < AUTO_MAX)]

    if counts is not None:
        answered, inferred = searcher.answered, searcher.inferred
        counts["evaluated"] = mutants.cpu() - answered - inferred
        counts["answered"], counts["inferred"] = answered, inferred
        if not cfg.monotone:
            counts["non_monotone"], counts["splits"] = searcher.broken.unbind(1)
        counts["partitions"] = used.cpu()
    return combined.maps(used).float()


def _cached_passes(
    engine: QueryEngine, images: Tensor, img: Tensor, visible: Tensor, target: Tensor,
    memo: dict[tuple[int, bytes], bool] | None, answered: Tensor,
) -> Tensor:
    """Section 5.1's pass test of mutants (image `img`, mask `visible`): the mutant keeps the target class; the model
    is asked only for masks not seen before for that image (`memo`: (image, packed mask) -> passed); `answered`
    counts the others per image."""
    if memo is None:
        return engine.masked_probabilities(images, img, visible).argmax(1) == target[img]
    packed = np.packbits(visible.flatten(1).cpu().numpy(), axis=1)
    keys = [(int(i), row.tobytes()) for i, row in zip(img.tolist(), packed)]
    new: dict[tuple[int, bytes], int] = {}
    for k, key in enumerate(keys):
        if key not in memo and key not in new:
            new[key] = k
    rows = torch.tensor(list(new.values()), dtype=torch.long, device=visible.device)
    if len(rows):
        p = engine.masked_probabilities(images, img[rows], visible[rows])
        memo.update(zip(new, (p.argmax(1) == target[img[rows]]).tolist()))
    answered.index_add_(0, img.cpu(), torch.ones(len(img), dtype=torch.long))
    answered.index_add_(0, img[rows].cpu(), -torch.ones(len(rows), dtype=torch.long))
    return torch.tensor([memo[key] for key in keys], device=visible.device)


def _next_tasks(
    tasks: _Tasks, children: Tensor, area: Tensor, outcomes: Tensor, go_on: Tensor, min_size: int, h: int, w: int,
) -> _Tasks:
    """Algorithm 2, lines 5-8 with section 5.2: queue the `_QUEUE_LEN` smallest passing mutants of each search
    and refine each of their superpixels while the others stay at their original values."""
    dev = tasks.context.device
    subsets = MUTANT_SUBSETS.to(dev)
    vis = VISIBLE.to(dev)[subsets]
    t_count = len(children)
    cand = outcomes[:, subsets] & go_on[:, None] & ((area[:, None, :] > 0) | ~vis[None]).all(2)
    size = tasks.context.flatten(1).sum(1)[:, None] + (area.double() @ vis.double().T).long()  # no integer matmul on CUDA
    key = torch.where(cand, size, torch.iinfo(torch.long).max).flatten()
    search = tasks.search[:, None].expand(-1, len(subsets)).flatten()
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(search[order], stable=True)]
    grouped = search[order]
    first = torch.searchsorted(grouped, grouped, side="left")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=dev) - first
    chosen = (cand.flatten() & (rank < _QUEUE_LEN)).view(t_count, len(subsets))

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
