"""ReX: causal responsibility maps and minimal sufficient explanations for black-box image classifiers."""
from rex.callback import ReXCallback
from rex.confidence import ConfidenceMap, with_confidence
from rex.contrastive import Complete, Contrastive, complete_extract, contrastive_extract
from rex.explainer import ReX, ReXConfig, ReXResult, rex_explain
from rex.extraction import (
    Extraction, ExtractionSettings, explanation_first, extract, multiple_explanations, pixel_rank, prune, scan,
)
from rex.metrics import explanation_size, insertion_deletion, rex_metrics
from rex.partition import box_area, box_masks, quadrant_labels, split_boxes
from rex.responsibility import responsibility, subset_outcomes
from rex.presets import PRESETS, Preset
from rex.search import SearchSettings, passes, responsibility_map
from rex.spatial import circle_masks, spatial_extract, sufficient_circles
from rex.spotlight import dice_coefficients, dice_separation, spotlight_explanations

__all__ = [
    "PRESETS", "Complete", "ConfidenceMap", "Contrastive", "Extraction", "ExtractionSettings", "Preset", "ReX",
    "ReXCallback", "ReXConfig", "ReXResult", "SearchSettings", "box_area", "box_masks", "circle_masks",
    "complete_extract", "contrastive_extract", "dice_coefficients", "dice_separation", "explanation_first",
    "explanation_size", "extract", "insertion_deletion", "multiple_explanations", "passes", "pixel_rank", "prune",
    "quadrant_labels", "responsibility", "responsibility_map", "rex_explain", "rex_metrics", "scan",
    "spatial_extract", "split_boxes", "spotlight_explanations", "subset_outcomes", "sufficient_circles",
    "with_confidence",
]
