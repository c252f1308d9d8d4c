"""Salvage and its foundation: maskable classifiers, the masked-image surrogate, mask samplers, checkpoints."""
from salvage import synthetic_vit  # noqa: F401  (registers the synthetic ViTs in timm)
from salvage.checkpoints import load_checkpoint, stage_module
from salvage.classifier import ClassifierModule, build_classifier
from salvage.explainer import ExplainerModule, salvage_explain, vit_shapley_explain
from salvage.maskable import MaskableClassifier, create_backbone
from salvage.masks import fixed_fraction_masks, subsets_of_size, uniform_size_masks
from salvage.metrics import (
    SRG,
    RelativeSRG,
    RelevanceAccuracy,
    insertion_curve,
    patch_scores,
    relative_insertion_curve,
    relative_srg_scores,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
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
    "SRG",
    "ClassifierModule",
    "ExplainerModule",
    "MaskTransformer",
    "RelativeSRG",
    "RelevanceAccuracy",
    "SegmenterExplainer",
    "coalition_logits",
    "efficient_normalisation",
    "exact_shapley_values",
    "guided_masks",
    "insertion_curve",
    "js_divergence",
    "js_loss",
    "kernel_masks",
    "patch_scores",
    "relative_insertion_curve",
    "relative_srg_scores",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "salvage_explain",
    "sample_masks",
    "shapley_distribution",
    "shapley_masks",
    "srg_scores",
    "vit_shapley_explain",
    "vit_shapley_loss",
    "weighted_subsets",
    "MaskableClassifier",
    "SurrogateModule",
    "build_classifier",
    "create_backbone",
    "fixed_fraction_masks",
    "load_checkpoint",
    "stage_module",
    "subsets_of_size",
    "uniform_size_masks",
]
