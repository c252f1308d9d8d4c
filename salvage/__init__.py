"""Salvage: Shapley-distribution explainers (JS loss, attribution-guided sampling), the masked-image surrogate stage,
the explainer stage (Salvage or ViT-Shapley), mask samplers, Shapley maths and Salvage's metrics (appendix A.1)."""
from salvage.explainer import ExplainerModule, salvage_explain, surrogate_backbone_spec, vit_shapley_explain
from salvage.metrics import (
    SRG,
    RelativeSRG,
    RelevanceAccuracy,
    insertion_curve,
    patch_scores,
    relative_insertion_curve,
    relative_srg_scores,
    srg_scores,
)
from salvage.sampling import guided_masks, kernel_masks, sample_masks, shapley_masks, weighted_subsets
from salvage.segmenter import MaskTransformer, SegmenterExplainer
from salvage.shapley import (
    coalition_logits,
    efficient_normalisation,
    exact_shapley_values,
    js_divergence,
    js_loss,
    shapley_distribution,
    vit_shapley_loss,
)
from salvage.surrogate import SurrogateModule

__all__ = [
    "SRG", "ExplainerModule", "MaskTransformer", "RelativeSRG", "RelevanceAccuracy", "SegmenterExplainer",
    "SurrogateModule", "coalition_logits", "efficient_normalisation", "exact_shapley_values", "guided_masks",
    "insertion_curve", "js_divergence", "js_loss", "kernel_masks", "patch_scores", "relative_insertion_curve",
    "relative_srg_scores", "salvage_explain", "sample_masks", "shapley_distribution", "shapley_masks", "srg_scores",
    "surrogate_backbone_spec", "vit_shapley_explain", "vit_shapley_loss", "weighted_subsets",
]
