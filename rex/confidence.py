"""Confidence map from the mutants ReX already evaluated: RISE's estimator (Petsiuk et al. 2018, eq. 6) of each
pixel's effect, the mean target probability of the mutants keeping it minus that of the mutants masking it."""
from __future__ import annotations

import torch
from torch import Tensor


class ConfidenceMap:
    """An observer for `models.queries.QueryEngine`: accumulates, per image and pixel, the target probability of
    every masked query (search mutants, extraction prefixes, pruned explanations), so the map costs no model
    evaluation of its own."""

    def __init__(self, target: Tensor, height: int, width: int) -> None:
        b, dev = len(target), target.device
        self.target = target
        self.shape = (b, height, width)
        self.kept = torch.zeros(b, height * width, dtype=torch.float64, device=dev)
        self.kept_count = torch.zeros_like(self.kept)
        self.total = torch.zeros(b, dtype=torch.float64, device=dev)
        self.count = torch.zeros_like(self.total)

    def __call__(self, index: Tensor, visible: Tensor, probs: Tensor) -> None:
        """Record queries of images `index` (M,) with `visible` (M, H, W) pixels kept and class `probs` (M, C)."""
        index = index.to(self.kept.device)
        p = probs.gather(1, self.target[index][:, None].to(probs.device))[:, 0].to(self.kept)
        vis = visible.flatten(1).to(self.kept)
        self.kept.index_add_(0, index, vis * p[:, None])
        self.kept_count.index_add_(0, index, vis)
        self.total.index_add_(0, index, p)
        self.count.index_add_(0, index, torch.ones_like(p))

    def map(self) -> Tensor:
        """(B, H, W): mean probability where kept minus where masked; 0 for a pixel never (or always) kept."""
        masked_count = self.count[:, None] - self.kept_count
        seen = (self.kept_count > 0) & (masked_count > 0)
        masked = (self.total[:, None] - self.kept) / masked_count.clamp(min=1)
        effect = self.kept / self.kept_count.clamp(min=1) - masked
        return torch.where(seen, effect, torch.zeros_like(effect)).float().view(self.shape)


def _unit(maps: Tensor) -> Tensor:
    """Each map (B, H, W) scaled to [0, 1] (a constant map to 0)."""
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)


def with_confidence(maps: Tensor, confidence: Tensor, weight: float) -> Tensor:
    """unit(maps) + `weight` x unit(confidence), each scaled to [0, 1] per image: a small weight breaks the
    responsibility map's ties (and near-ties) by the confidence map."""
    return _unit(maps) + weight * _unit(confidence.to(maps))
