"""Ground-truth metrics of any explanation, and the one way results are averaged.

RRA and RMA (Arras et al. 2022) score a map against the object mask; IN and OUT (ReX section 6) score an extracted
explanation against the object mask and the occluders; `degenerate` flags an explanation whose size says nothing
(the fully masked image already passes the sufficiency test). `ScoreSummary` accumulates per-image scores into mean, std
and count, synced across DDP ranks (torchmetrics); NaN scores are left out of the means and counted.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.stats import sem, ttest_1samp
from torch import Tensor
from torchmetrics import Metric

from explainers.maps import to_pixel_map

#: An explanation is degenerate when the fully masked image comes within this probability of being sufficient.
DEGENERATE_MARGIN = 0.05


#: The default sufficiency requirement for two-class models (fraction of the full image's target probability).
TWO_CLASS_MIN_CONFIDENCE = 0.8


def resolve_min_confidence(min_confidence: float | str, num_classes: int) -> float:
    """The sufficiency requirement (rex-xai's confidence_filter): "auto" is 0 (keep the class, ReX section 5.1) for
    three or more classes and 0.8 of the full image's confidence for two classes, where a fully masked image sits
    near p = 0.5 and keeping the class alone is met by a handful of pixels."""
    if min_confidence == "auto":
        return TWO_CLASS_MIN_CONFIDENCE if num_classes == 2 else 0.0
    value = float(min_confidence)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_confidence must be 'auto' or lie in [0, 1], got {min_confidence!r}")
    return value


def degenerate(blank: Tensor, full: Tensor, target: Tensor, min_confidence: float,
               margin: float = DEGENERATE_MARGIN) -> Tensor:
    """(B,) True where the fully masked image's probabilities `blank` (B, C) already (nearly, within `margin`)
    meet the sufficiency test for `target`: its top class and at least `min_confidence` x the full image's
    probability `full` (B,). Any subset of pixels then "suffices", so the explanation's size says nothing."""
    p = blank.gather(1, target[:, None])[:, 0]
    return (p >= blank.amax(1) - margin) & (p >= min_confidence * full - margin)


def degenerate_images(engine: Any, images: Tensor, target: Tensor, min_confidence: float | str) -> tuple[Tensor, ...]:
    """(`degenerate` flags (B,), probabilities on the images (B, C), on their fully masked versions (B, C)) from
    one batched query of a `models.queries.QueryEngine`; `min_confidence` as `resolve_min_confidence` takes it."""
    probs = engine.probabilities(torch.cat([images, engine.blank(images)])).float()
    full, blank = probs[: len(images)], probs[len(images):]
    target = target.to(full.device)
    min_confidence = resolve_min_confidence(min_confidence, full.shape[1])
    return degenerate(blank, full.gather(1, target[:, None])[:, 0], target, min_confidence), full, blank


def _pixel_inputs(maps: Tensor, masks: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
    gt = masks.reshape(masks.shape[0], *masks.shape[-2:]).bool()
    pixel = to_pixel_map(maps, tuple(gt.shape[-2:]), target).float()
    return pixel.flatten(1), gt.flatten(1)


def relevance_mass_accuracy(maps: Tensor, masks: Tensor, target: Tensor | None = None) -> Tensor:
    """RMA (Arras et al. 2022): positive relevance inside the ground-truth mask / all positive relevance, (B,).

    Undefined, so NaN, for a map with a NaN pixel or no positive relevance and for an empty mask.
    """
    pixel, gt = _pixel_inputs(maps, masks, target)
    positive = pixel.clamp_min(0)
    total = positive.sum(1)
    rma = (positive * gt).sum(1) / total
    return torch.where((total > 0) & gt.any(1) & ~pixel.isnan().any(1), rma, torch.full_like(rma, float("nan")))


def relevance_rank_accuracy(maps: Tensor, masks: Tensor, target: Tensor | None = None) -> Tensor:
    """RRA (Arras et al. 2022): fraction of the K most relevant pixels inside the mask, K = mask size, (B,).

    Ties at the K-th value are scored by their expected share: if r of the top-K slots go to a tie group of T pixels,
    t of them inside the mask, they add r t / T hits, so the score does not depend on pixel order and a constant map
    scores the chance level K / N. Undefined, so NaN, for a map with a NaN pixel and for an empty mask.
    """
    pixel, gt = _pixel_inputs(maps, masks, target)
    k = gt.sum(1)
    kth = pixel.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(min=0)[:, None])
    above, tied = pixel > kth, pixel == kth
    slots = (k - above.sum(1)).double()
    hits = (above & gt).sum(1) + slots * (tied & gt).sum(1) / tied.sum(1).clamp(min=1)
    rra = (hits / k).float()
    return torch.where((k > 0) & ~pixel.isnan().any(1), rra, torch.full_like(rra, float("nan")))


def fraction_inside(explanation: Tensor, region: Tensor) -> Tensor:
    """ReX section 6 (IN): fraction (B,) of the explanation's pixels that lie inside `region` (B, 1, H, W); NaN for
    an empty explanation."""
    e = explanation.flatten(1)
    return (e & region.flatten(1).to(e.device)).sum(1) / e.sum(1).float().where(e.any(1), torch.tensor(float("nan")))


def fraction_outside(explanation: Tensor, region: Tensor) -> Tensor:
    """ReX section 6 (OUT): fraction (B,) of the explanation's pixels that lie outside `region` (B, 1, H, W); NaN for
    an empty explanation."""
    e = explanation.flatten(1)
    return (e & ~region.flatten(1).to(e.device)).sum(1) / e.sum(1).float().where(e.any(1), torch.tensor(float("nan")))


def ground_truth_metrics(maps: Tensor, explanation: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """RRA, RMA and IN against `batch["mask"]` and OUT against `batch["occluder_mask"]`, where the batch has them."""
    out: dict[str, Tensor] = {}
    if "mask" in batch:
        out["in"] = fraction_inside(explanation, batch["mask"])
        out["rra"] = relevance_rank_accuracy(maps, batch["mask"])
        out["rma"] = relevance_mass_accuracy(maps, batch["mask"])
    if "occluder_mask" in batch:
        out["out"] = fraction_outside(explanation, batch["occluder_mask"])
    return out


class ScoreSummary(Metric):
    """Mean, (population) std and count of per-image scores over batches and ranks; NaN scores are excluded from
    the mean and std and counted in `<name>_nan`."""

    full_state_update = False

    def __init__(self, names: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.names = tuple(names)
        for name in self.names:
            for part, dtype in (("sum", torch.float64), ("sq", torch.float64), ("n", torch.long), ("nan", torch.long)):
                self.add_state(f"{name}_{part}", torch.zeros((), dtype=dtype), dist_reduce_fx="sum")

    def update(self, scores: Mapping[str, Tensor]) -> None:
        """Add per-image scores {name: (B,)}; names outside `names` are refused."""
        unknown = set(scores) - set(self.names)
        if unknown:
            raise KeyError(f"scores {sorted(unknown)} are not among this summary's names {self.names}")
        for name, v in scores.items():
            v = torch.as_tensor(v).detach().double().to(self.device).flatten()
            nan = v.isnan()
            v = v[~nan]
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + v.sum())
            setattr(self, f"{name}_sq", getattr(self, f"{name}_sq") + (v * v).sum())
            setattr(self, f"{name}_n", getattr(self, f"{name}_n") + v.numel())
            setattr(self, f"{name}_nan", getattr(self, f"{name}_nan") + nan.sum())

    def compute(self) -> dict[str, Tensor]:
        """{name: mean, name_std: std, name_n: count} for every name seen at least once (NaN counts when > 0)."""
        out = {}
        for name in self.names:
            n = getattr(self, f"{name}_n")
            if n > 0:
                mean = getattr(self, f"{name}_sum") / n
                out[name] = mean.float()
                out[f"{name}_std"] = (getattr(self, f"{name}_sq") / n - mean**2).clamp(min=0).sqrt().float()
                out[f"{name}_n"] = n
            if getattr(self, f"{name}_nan") > 0:
                out[f"{name}_nan"] = getattr(self, f"{name}_nan")
        return out


def summarise(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    """`ScoreSummary` of already-gathered rows (no sync): {name, name_std, name_n, name_se, ...} as floats, where
    name_se is the standard error of the mean, the sample std (n - 1) over sqrt(n) (NaN for one value)."""
    summary = ScoreSummary(names, sync_on_compute=False)
    for row in rows:
        present = {k: torch.tensor([float(row[k])]) for k in names if k in row and row[k] is not None}
        if present:
            summary.update(present)
    out = {k: float(v) for k, v in summary.compute().items()}
    for name in names:
        if f"{name}_n" in out:
            n = out[f"{name}_n"]
            out[f"{name}_se"] = out[f"{name}_std"] / math.sqrt(n - 1) if n > 1 else math.nan
    return out


def paired_interval(a: Sequence[float | None], b: Sequence[float | None], level: float = 0.95) -> dict[str, float]:
    """Mean of the per-image differences a - b over the images where both are known, with its `level` confidence
    interval from Student's t (scipy's one-sample t-test of the differences): {mean, low, high, se, n}; NaN bounds
    for n < 2."""
    d = [x - y for x, y in zip(a, b, strict=True)
         if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    n = len(d)
    if n < 2:
        return {"mean": d[0] if n else math.nan, "low": math.nan, "high": math.nan, "se": math.nan, "n": n}
    interval = ttest_1samp(d, 0.0).confidence_interval(level)
    return {"mean": sum(d) / n, "low": float(interval.low), "high": float(interval.high),
            "se": float(sem(d)), "n": n}
