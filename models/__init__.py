"""The classifiers every method explains, and what every stage shares: the maskable model wrapper, the one masking
convention, black-box queries, the classifier stage, the open stage registry and weights_only checkpoint loading."""
from models.classifier import MASKED_FRACTIONS, ClassifierModule, MaskableModule
from models.maskable import MaskableClassifier, build_classifier, create_backbone
from models.masking import (
    MaskValue,
    apply_mask,
    expand_fill,
    fixed_fraction_masks,
    mask_fill,
    mask_value_of,
    patch_to_pixel,
    per_image_masks,
    subsets_of_size,
    uniform_size_masks,
)
from models.queries import BlackBoxModel, CallCounter, QueryEngine
from models.stages import (
    StageModule,
    available_stages,
    load_checkpoint,
    load_stage,
    register_stage,
    stage_class,
)

__all__ = [
    "MASKED_FRACTIONS", "BlackBoxModel", "CallCounter", "ClassifierModule", "MaskValue", "MaskableClassifier", "MaskableModule",
    "QueryEngine", "StageModule", "apply_mask", "available_stages", "build_classifier", "create_backbone",
    "expand_fill", "fixed_fraction_masks", "load_checkpoint", "load_stage", "mask_fill", "mask_value_of",
    "patch_to_pixel", "per_image_masks", "register_stage", "stage_class", "subsets_of_size", "uniform_size_masks",
]
