"""ReX evaluation metrics (section 6) for any attribution map (B, H, W) or (B, gh, gw): explanation size by
Algorithm 3's extraction and normalised insertion / deletion curves with their AUCs. IN and OUT, the ground-truth
half of section 6, are `explainers.metrics.fraction_inside` / `fraction_outside`. The model is queried through
`models.queries.QueryEngine` (`engine`: eager, compiled or ONNX Runtime)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from explainers.maps import to_pixel_map
from models.masking import MaskValue
from models.queries import QueryBackend, QueryEngine
from rex.extraction import extract, pixel_rank


def _queries(
    model: nn.Module | QueryEngine, max_batch: int, mask_value: MaskValue, engine: QueryBackend
) -> QueryEngine:
    """The model's `QueryEngine` (ReX section 4), or `model` itself when it already is one."""
    return model if isinstance(model, QueryEngine) else QueryEngine(model, max_batch, mask_value, engine)


def explanation_size(
    model: nn.Module | QueryEngine, images: Tensor, maps: Tensor, target: Tensor, min_confidence: float = 0.0,
    max_batch: int = 256, mask_value: MaskValue = None, engine: QueryBackend = "eager",
) -> tuple[Tensor, Tensor]:
    """Section 6: (size fraction (B,), explanation mask (B, 1, H, W)) by Algorithm 3's extraction on `maps`."""
    maps = to_pixel_map(maps, tuple(images.shape[-2:]))
    ex = extract(_queries(model, max_batch, mask_value, engine), images, maps, target, min_confidence=min_confidence)
    return ex.size, ex.mask


def insertion_deletion(
    model: nn.Module | QueryEngine, images: Tensor, maps: Tensor, target: Tensor, steps: int = 50,
    max_batch: int = 256, mask_value: MaskValue = None, engine: QueryBackend = "eager",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Section 6: insertion and deletion curves (B, steps + 1) of the target probability over the fraction of
    pixels inserted / deleted in ranking order, divided by the full image's probability, and their AUCs (B,)."""
    queries = _queries(model, max_batch, mask_value, engine)
    b, _, h, w = images.shape
    dev = images.device
    target = target.to(dev)
    rank = pixel_rank(to_pixel_map(maps, (h, w)).to(dev))
    frac = torch.linspace(0, 1, steps + 1, device=dev)
    count = torch.round(frac * h * w).long()
    inserted = (rank[:, None, :] < count[None, :, None]).view(-1, h, w)
    img = torch.arange(b, device=dev).repeat_interleave(steps + 1)
    visible = torch.cat([inserted, ~inserted])
    probs = queries.masked_probabilities(images, torch.cat([img, img]), visible)
    p = probs.gather(1, torch.cat([target[img], target[img]])[:, None])[:, 0].view(2, b, steps + 1)
    curves = p / p[1, :, :1].clamp(min=1e-12)
    ins, dele = curves[0], curves[1]
    return ins, dele, torch.trapezoid(ins, frac, dim=1), torch.trapezoid(dele, frac, dim=1)


def rex_metrics(
    model: nn.Module | QueryEngine, images: Tensor, maps: Tensor, target: Tensor, explanation: Tensor | None = None,
    steps: int = 50, min_confidence: float = 0.0, max_batch: int = 256, mask_value: MaskValue = None,
    engine: QueryBackend = "eager",
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Section 6, Tables 1-3: per-image size, insertion and deletion AUC of `maps`, the explanation they were
    measured on (`explanation` (B, 1, H, W) when the method extracted its own (ReX), else extracted from `maps`) and
    the insertion and deletion curves (2, B, steps + 1) the AUCs integrate."""
    queries = _queries(model, max_batch, mask_value, engine)
    if explanation is None:
        size, explanation = explanation_size(queries, images, maps, target, min_confidence)
    else:
        size = explanation.flatten(1).float().mean(1)
    ins_curve, del_curve, ins, dele = insertion_deletion(queries, images, maps, target, steps)
    return {"size": size, "insertion": ins, "deletion": dele}, explanation, torch.stack([ins_curve, del_curve])
