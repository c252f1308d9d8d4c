"""ReX evaluation metrics (section 6) for any attribution map (B, H, W): explanation size, normalised
insertion / deletion curves and their AUC, IN (inside the ground truth) and OUT (outside the occluders)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from rex.blackbox import BlackBox, MaskValue
from rex.extraction import extract, pixel_rank


def explanation_size(
    model: nn.Module | BlackBox, images: Tensor, maps: Tensor, target: Tensor, min_confidence: float = 0.0,
    max_batch: int = 256, mask_value: MaskValue = None,
) -> tuple[Tensor, Tensor]:
    """Section 6: (size fraction (B,), explanation mask (B, 1, H, W)) by Algorithm 3's extraction on `maps`."""
    bb = model if isinstance(model, BlackBox) else BlackBox(model, max_batch, mask_value)
    ex = extract(bb, images, maps, target, min_confidence=min_confidence)
    return ex.size, ex.mask


def insertion_deletion(
    model: nn.Module | BlackBox, images: Tensor, maps: Tensor, target: Tensor, steps: int = 50,
    max_batch: int = 256, mask_value: MaskValue = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Section 6: insertion and deletion curves (B, steps + 1) of the target probability over the fraction of
    pixels inserted / deleted in ranking order, divided by the full image's probability, and their AUCs (B,)."""
    bb = model if isinstance(model, BlackBox) else BlackBox(model, max_batch, mask_value)
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    rank = pixel_rank(maps.to(dev))
    frac = torch.linspace(0, 1, steps + 1, device=dev)
    count = torch.round(frac * h * w).long()
    inserted = (rank[:, None, :] < count[None, :, None]).view(-1, h, w)
    img = torch.arange(b, device=dev).repeat_interleave(steps + 1)
    visible = torch.cat([inserted, ~inserted])
    probs = bb.masked_probabilities(images, torch.cat([img, img]), visible)
    p = probs.gather(1, torch.cat([target[img], target[img]])[:, None])[:, 0].view(2, b, steps + 1)
    curves = p / p[1, :, :1].clamp(min=1e-12)
    ins, dele = curves[0], curves[1]
    return ins, dele, torch.trapezoid(ins, frac, dim=1), torch.trapezoid(dele, frac, dim=1)


def fraction_inside(explanation: Tensor, region: Tensor) -> Tensor:
    """Section 6 (IN): fraction (B,) of the explanation's pixels that lie inside `region` (B, 1, H, W)."""
    e = explanation.flatten(1)
    return (e & region.flatten(1)).sum(1) / e.sum(1).clamp(min=1)


def fraction_outside(explanation: Tensor, region: Tensor) -> Tensor:
    """Section 6 (OUT): fraction (B,) of the explanation's pixels that lie outside `region` (B, 1, H, W)."""
    e = explanation.flatten(1)
    return (e & ~region.flatten(1)).sum(1) / e.sum(1).clamp(min=1)


def rex_metrics(
    model: nn.Module | BlackBox, images: Tensor, maps: Tensor, target: Tensor, gt_mask: Tensor | None = None,
    occluder_mask: Tensor | None = None, steps: int = 50, min_confidence: float = 0.0, max_batch: int = 256,
    mask_value: MaskValue = None,
) -> dict[str, Tensor]:
    """Section 6, Tables 1-3: per-image size, insertion and deletion AUC, IN and OUT (when masks are given)."""
    bb = model if isinstance(model, BlackBox) else BlackBox(model, max_batch, mask_value)
    size, expl = explanation_size(bb, images, maps, target, min_confidence)
    _, _, ins, dele = insertion_deletion(bb, images, maps, target, steps)
    out = {"size": size, "insertion": ins, "deletion": dele}
    if gt_mask is not None:
        out["in"] = fraction_inside(expl, gt_mask.to(expl.device))
    if occluder_mask is not None:
        out["out"] = fraction_outside(expl, occluder_mask.to(expl.device))
    return out


class ReXMetrics(Metric):
    """Section 6, Tables 1-3: mean and std over images of size, insertion, deletion, IN and OUT, DDP-synced."""

    full_state_update = False
    names = ("size", "insertion", "deletion", "in", "out")

    def __init__(self, steps: int = 50, min_confidence: float = 0.0, max_batch: int = 256, mask_value: MaskValue = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps, self.min_confidence, self.max_batch, self.mask_value = steps, min_confidence, max_batch, mask_value
        for name in self.names:
            self.add_state(f"{name}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, model: nn.Module | dict[str, Tensor], images: Tensor | None = None, maps: Tensor | None = None,
               target: Tensor | None = None, gt_mask: Tensor | None = None,
               occluder_mask: Tensor | None = None) -> None:
        """Evaluate the metrics of `maps` on a batch, or take a dict of per-image values from `rex_metrics`."""
        if isinstance(model, dict):
            values = model
        else:
            values = rex_metrics(model, images, maps, target, gt_mask, occluder_mask, self.steps,
                                 self.min_confidence, self.max_batch, self.mask_value)
        for name, v in values.items():
            v = v.detach().double().to(self.device)
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + v.sum())
            setattr(self, f"{name}_sq", getattr(self, f"{name}_sq") + (v * v).sum())
            setattr(self, f"{name}_n", getattr(self, f"{name}_n") + v.numel())

    def compute(self) -> dict[str, Tensor]:
        """Mean and (population) std of every metric seen at least once."""
        out = {}
        for name in self.names:
            n = getattr(self, f"{name}_n")
            if n > 0:
                mean = getattr(self, f"{name}_sum") / n
                out[name] = mean.float()
                out[f"{name}_std"] = (getattr(self, f"{name}_sq") / n - mean**2).clamp(min=0).sqrt().float()
        return out
