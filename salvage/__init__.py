"""Salvage and its foundation: maskable classifiers, the masked-image surrogate, mask samplers, checkpoints."""
from salvage.checkpoints import load_checkpoint, stage_module
from salvage.classifier import ClassifierModule, build_classifier
from salvage.maskable import MaskableClassifier, create_backbone
from salvage.masks import fixed_fraction_masks, subsets_of_size, uniform_size_masks
from salvage.surrogate import SurrogateModule

__all__ = [
    "ClassifierModule",
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
