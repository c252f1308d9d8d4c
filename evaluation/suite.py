"""The metric suite: every metric family that applies to an explanation, each from its one implementation.

ReX section 6 (size, insertion, deletion; `rex.metrics`) on the classifier, ground truth (IN, OUT, RRA, RMA;
`explainers.metrics`) where the batch has masks, Salvage appendix A.1 (SRG, R-SRG; `salvage.metrics`) when a
surrogate is loaded, plus the per-image scores the method measured itself (e.g. the intervention test's S, p).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from explainers.metrics import degenerate_images, ground_truth_metrics
from explainers.protocol import Explanation
from models.queries import QueryEngine
from rex.metrics import rex_metrics
from salvage.metrics import relative_srg_scores, srg_scores

#: Column order of the comparison table.
METRIC_KEYS = ("size", "insertion", "deletion", "in", "out", "srg", "r_srg", "rra", "rma", "S", "p", "flips")
@torch.no_grad()
def score(
    explanation: Explanation, models: Mapping[str, nn.Module], images: Tensor, batch: Mapping[str, Any],
    steps: int = 50, srg_masks: int = 128, generator: torch.Generator | None = None, min_confidence: float = 0.0,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    """Per-image metrics {name: (B,)} of an explanation, the sufficient explanation (B, 1, H, W) they used and the
    insertion and deletion curves (2, B, steps + 1) (None for methods without a map).

    Map methods also get `blank_probability` (the target's probability on the fully masked image) and the flag
    `degenerate` (see :func:`degenerate`); a degenerate image's size, IN and OUT are NaN, so means leave it out
    and count it."""
    e = explanation
    metrics = {k: v for k, v in e.scores.items() if v.dtype != torch.bool}
    if e.maps is None:
        return metrics, None, None
    engine = QueryEngine(models["classifier"])
    target = e.target.to(images.device)
    flat, _, blank = degenerate_images(engine, images, target, min_confidence)
    section6, extracted, curves = rex_metrics(engine, images, e.maps, e.target, e.explanation, steps, min_confidence)
    metrics.update(section6)
    metrics.update(ground_truth_metrics(e.maps, extracted, batch))
    for key in ("size", "in", "out"):
        if key in metrics:
            metrics[key] = torch.where(flat.to(metrics[key].device), torch.nan, metrics[key].float())
    metrics["blank_probability"] = blank.gather(1, target[:, None])[:, 0]
    metrics["degenerate"] = flat
    surrogate = models.get("surrogate")
    if surrogate is not None:
        metrics["srg"] = srg_scores(surrogate, images, e.maps, e.target)["srg"]
        metrics["r_srg"] = relative_srg_scores(surrogate, images, e.maps, e.target, srg_masks, generator)["r_srg"]
    return metrics, extracted, curves
