"""Ground-truth metrics of any explanation, and the one way results are averaged.

RRA and RMA (Arras et al. 2022) score a map against the object mask; IN and OUT (ReX section 6) score an extracted
explanation against the object mask and the occluders. `ScoreSummary` accumulates per-image scores into mean, std
and count, synced across DDP ranks (torchmetrics); NaN scores are left out of the means and counted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from explainers.maps import to_pixel_map


def _pixel_inputs(maps: Tensor, masks: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
    gt = masks.reshape(masks.shape[0], *masks.shape[-2:]).bool()
    pixel = to_pixel_map(maps, tuple(gt.shape[-2:]), target).float()
    return pixel.flatten(1), gt.flatten(1)


def relevance_mass_accuracy(maps: Tensor, masks: Tensor, target: Tensor | None = None) -> Tensor:
    """RMA (Arras et al. 2022): positive relevance inside the ground-truth mask / all positive relevance, (B,)."""
    pixel, gt = _pixel_inputs(maps, masks, target)
    positive = pixel.clamp_min(0)
    total = positive.sum(1)
    return torch.where(total > 0, (positive * gt).sum(1) / total.clamp_min(1e-12), torch.zeros_like(total))


def relevance_rank_accuracy(maps: Tensor, masks: Tensor, target: Tensor | None = None) -> Tensor:
    """RRA (Arras et al. 2022): fraction of the K most relevant pixels inside the mask, K = mask size, (B,)."""
    pixel, gt = _pixel_inputs(maps, masks, target)
    k = gt.sum(1)
    ranks = pixel.argsort(dim=1, descending=True).argsort(dim=1)
    hits = ((ranks < k[:, None]) & gt).sum(1)
    return torch.where(k > 0, hits / k.clamp_min(1), torch.zeros_like(k, dtype=torch.float)).float()


def fraction_inside(explanation: Tensor, region: Tensor) -> Tensor:
    """ReX section 6 (IN): fraction (B,) of the explanation's pixels that lie inside `region` (B, 1, H, W)."""
    e = explanation.flatten(1)
    return (e & region.flatten(1).to(e.device)).sum(1) / e.sum(1).clamp(min=1)


def fraction_outside(explanation: Tensor, region: Tensor) -> Tensor:
    """ReX section 6 (OUT): fraction (B,) of the explanation's pixels that lie outside `region` (B, 1, H, W)."""
    e = explanation.flatten(1)
    return (e & ~region.flatten(1).to(e.device)).sum(1) / e.sum(1).clamp(min=1)


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
    """`ScoreSummary` of already-gathered rows (no sync): {name, name_std, name_n, ...} as floats."""
    summary = ScoreSummary(names, sync_on_compute=False)
    for row in rows:
        present = {k: torch.tensor([float(row[k])]) for k in names if k in row and row[k] is not None}
        if present:
            summary.update(present)
    return {k: float(v) for k, v in summary.compute().items()}
