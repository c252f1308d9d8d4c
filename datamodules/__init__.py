"""LightningDataModules: synthetic ground-truth scenes, Oxford-IIIT Pet, ImageNette, MURA."""
from datamodules.base import RealImageDataModule, TransformedSubset, split_indices, verify_images
from datamodules.imagenette import IMAGENETTE_CLASS_NAMES, ImagenetteDataModule
from datamodules.mura import MURA_CLASS_NAMES, MuraDataModule
from datamodules.pet import PET_CLASS_NAMES, PetDataModule
from datamodules.scenes import CLASS_SHAPES, DISTRACTOR_SHAPES, CueConfig, render_scene
from datamodules.synthetic import SyntheticDataModule, SyntheticScenes
from datamodules.transforms import eval_transform, train_transform

__all__ = [
    "CLASS_SHAPES",
    "DISTRACTOR_SHAPES",
    "IMAGENETTE_CLASS_NAMES",
    "MURA_CLASS_NAMES",
    "PET_CLASS_NAMES",
    "CueConfig",
    "ImagenetteDataModule",
    "MuraDataModule",
    "PetDataModule",
    "RealImageDataModule",
    "SyntheticDataModule",
    "SyntheticScenes",
    "TransformedSubset",
    "eval_transform",
    "render_scene",
    "split_indices",
    "train_transform",
    "verify_images",
]
