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

from explainers.metrics import ground_truth_metrics
from explainers.protocol import Explanation
from rex.metrics import rex_metrics
from salvage.metrics import relative_srg_scores, srg_scores

#: Column order of the comparison table.
METRIC_KEYS = ("size", "insertion", "deletion", "in", "out", "srg", "r_srg", "rra", "rma", "S", "p", "flips")


@torch.no_grad()
def score(
    explanation: Explanation, models: Mapping[str, nn.Module], images: Tensor, batch: Mapping[str, Any],
    steps: int = 50, srg_masks: int = 128, generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Per-image metrics {name: (B,)} of an explanation and the sufficient explanation (B, 1, H, W) they used."""
    e = explanation
    metrics = {k: v for k, v in e.scores.items() if v.dtype != torch.bool}
    if e.maps is None:
        return metrics, None
    section6, extracted = rex_metrics(models["classifier"], images, e.maps, e.target, e.explanation, steps)
    metrics.update(section6)
    metrics.update(ground_truth_metrics(e.maps, extracted, batch))
    surrogate = models.get("surrogate")
    if surrogate is not None:
        metrics["srg"] = srg_scores(surrogate, images, e.maps, e.target)["srg"]
        metrics["r_srg"] = relative_srg_scores(surrogate, images, e.maps, e.target, srg_masks, generator)["r_srg"]
    return metrics, extracted
