"""ReX: causal responsibility maps and minimal sufficient explanations for black-box image classifiers."""
from rex.callback import ReXCallback
from rex.explainer import ReX, ReXConfig, ReXResult, rex_explain
from rex.extraction import Extraction, extract, multiple_explanations, pixel_rank
from rex.metrics import explanation_size, insertion_deletion, rex_metrics
from rex.partition import box_area, box_masks, quadrant_labels, split_boxes
from rex.responsibility import responsibility, subset_outcomes
from rex.search import passes, responsibility_map

__all__ = [
    "Extraction", "ReX", "ReXCallback", "ReXConfig", "ReXResult", "box_area", "box_masks", "explanation_size",
    "extract", "insertion_deletion", "multiple_explanations", "passes", "pixel_rank", "quadrant_labels",
    "responsibility", "responsibility_map", "rex_explain", "rex_metrics", "split_boxes", "subset_outcomes",
]
