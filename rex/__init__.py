"""ReX: causal responsibility maps and minimal sufficient explanations for black-box image classifiers."""
from rex.blackbox import BlackBox, apply_mask
from rex.explainer import ReX, ReXConfig, ReXResult, explain
from rex.extraction import Extraction, extract, multiple_explanations, pixel_rank
from rex.metrics import (
    ReXMetrics,
    explanation_size,
    fraction_inside,
    fraction_outside,
    insertion_deletion,
    rex_metrics,
)
from rex.partition import box_area, box_masks, quadrant_labels, split_boxes
from rex.responsibility import responsibility, subset_outcomes
from rex.search import passes, responsibility_map

__all__ = [
    "BlackBox", "Extraction", "ReX", "ReXConfig", "ReXMetrics", "ReXResult", "apply_mask", "box_area", "box_masks",
    "explain", "explanation_size", "extract", "fraction_inside", "fraction_outside", "insertion_deletion",
    "multiple_explanations", "passes", "pixel_rank", "responsibility", "responsibility_map", "rex_metrics",
    "quadrant_labels", "split_boxes", "subset_outcomes",
]
from rex.callback import ReXCallback  # noqa: E402  (evaluation callback, explain.py issue)
