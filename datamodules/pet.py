"""Oxford-IIIT Pet: 37 breeds, trimaps as ground-truth object masks, 80/10/10 split of all 7,349 images."""

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset
from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet
from torchvision.transforms.v2.functional import pil_to_tensor

from datamodules.base import RealImageDataModule, split_indices

PET_BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal", "Birman",
    "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel", "english_setter",
    "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon",
    "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
    "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
)  # fmt: skip
PET_CLASS_NAMES = tuple(" ".join(part.title() for part in breed.split("_")) for breed in PET_BREEDS)
TRIMAP_FOREGROUND, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"


class PetDataModule(RealImageDataModule):
    """Oxford-IIIT Pet with trimap ground truth, 80/10/10 split over all images (Salvage Sec. 5.1, ViT-Shapley)."""

    name = "Oxford-IIIT Pet"
    class_names = PET_CLASS_NAMES

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 44,
        download: bool = False,
        verify_images: bool = True,
        border_as_foreground: bool = False,
    ) -> None:
        super().__init__(root, img_size, batch_size, num_workers, seed, download, verify_images)
        self.border_as_foreground = border_as_foreground

    @property
    def folder(self) -> Path:
        """The dataset folder torchvision reads, root/oxford-iiit-pet (Salvage Sec. 5.1 data)."""
        return self.root / "oxford-iiit-pet"

    def expected_layout(self) -> str:
        """On-disk layout of Oxford-IIIT Pet as torchvision reads it, and where it comes from (Salvage Sec. 5.1)."""
        return (
            f"  {self.folder}/images/<Breed>_<n>.jpg\n"
            f"  {self.folder}/annotations/trainval.txt and test.txt "
            "(lines '<Breed>_<n> <class id 1-37> <species id> <breed id>')\n"
            f"  {self.folder}/annotations/trimaps/<Breed>_<n>.png (1 = pet, 2 = background, 3 = border)\n"
            f"Get images.tar.gz and annotations.tar.gz from {PET_URL} and extract both into {self.folder}/, "
            "or pass download=True."
        )

    def required_paths(self) -> list[Path]:
        """Folders and annotation lists that must exist (Salvage Sec. 5.1 data)."""
        annotations = self.folder / "annotations"
        return [self.folder / "images", annotations / "trainval.txt", annotations / "test.txt", annotations / "trimaps"]

    def fetch(self) -> None:
        """Download images and annotations through torchvision (Salvage Sec. 5.1 data)."""
        OxfordIIITPet(self.root, download=True)

    def build_splits(self) -> tuple[dict[str, tuple[Dataset, list[int]]], list[Path]]:
        """Pool torchvision's trainval and test lists, then split 80/10/10 with the seed (ViT-Shapley, Sec. 5.1)."""
        parts = [
            OxfordIIITPet(self.root, split=split, target_types=["category", "segmentation"])
            for split in ("trainval", "test")
        ]
        pool = ConcatDataset(parts)
        train, val, test = split_indices(len(pool), (0.8, 0.1, 0.1), self.seed)
        files = [path for part in parts for path in (*part._images, *part._segs)]
        return {"train": (pool, train), "val": (pool, val), "test": (pool, test)}, files

    def to_sample(self, image: Any, target: Any) -> dict[str, Any]:
        """Image, breed label and pet mask (trimap == 1, plus the border 3 if asked) (Salvage Sec. 5.3 RMA/RRA)."""
        label, trimap = target
        trimap = pil_to_tensor(trimap)[:1]
        foreground = trimap == TRIMAP_FOREGROUND
        if self.border_as_foreground:
            foreground |= trimap == TRIMAP_BORDER
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "mask": tv_tensors.Mask(foreground)}
