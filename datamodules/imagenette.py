"""ImageNette: 10 ImageNet classes; official train split, official val halved into val and test."""

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import Imagenette

from datamodules.base import RealImageDataModule, split_indices

IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)  # fmt: skip
IMAGENETTE_CLASS_NAMES = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)  # fmt: skip
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}
IMAGENETTE_URL = "https://github.com/fastai/imagenette"


class ImagenetteDataModule(RealImageDataModule):
    """ImageNette, train = official train, official val halved into val/test with the seed (Salvage Sec. 5.1)."""

    name = "ImageNette"
    class_names = IMAGENETTE_CLASS_NAMES

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 44,
        download: bool = False,
        verify_images: bool = True,
        size: str = "160px",
    ) -> None:
        if size not in IMAGENETTE_FOLDERS:
            raise ValueError(f"ImageNette size must be one of {sorted(IMAGENETTE_FOLDERS)}, got {size!r}")
        super().__init__(root, img_size, batch_size, num_workers, seed, download, verify_images)
        self.size = size

    @property
    def folder(self) -> Path:
        """The dataset folder torchvision reads, e.g. root/imagenette2-160 (Salvage Sec. 5.1 data)."""
        return self.root / IMAGENETTE_FOLDERS[self.size]

    def expected_layout(self) -> str:
        """On-disk layout of ImageNette as torchvision reads it, and where it comes from (Salvage Sec. 5.1)."""
        return (
            f"  {self.folder}/train/<wnid>/*.JPEG and {self.folder}/val/<wnid>/*.JPEG, "
            f"one folder per class wnid: {', '.join(IMAGENETTE_WNIDS)}\n"
            f"Get {self.folder.name}.tgz (size={self.size!r}; 'full', '320px' and '160px' exist) from "
            f"{IMAGENETTE_URL} and extract it into {self.root}/, or pass download=True."
        )

    def required_paths(self) -> list[Path]:
        """One folder per class in both official splits (Salvage Sec. 5.1 data)."""
        return [self.folder / split / wnid for split in ("train", "val") for wnid in IMAGENETTE_WNIDS]

    def fetch(self) -> None:
        """Download and extract the archive through torchvision (Salvage Sec. 5.1 data)."""
        Imagenette(self.root, size=self.size, download=True)

    def build_splits(self) -> tuple[dict[str, tuple[Dataset, list[int]]], list[Path]]:
        """Official train; the official val split halved with the seed into val and test (ViT-Shapley, Sec. 5.1)."""
        train, official_val = (Imagenette(self.root, split=split, size=self.size) for split in ("train", "val"))
        if tuple(train.wnids) != IMAGENETTE_WNIDS or tuple(official_val.wnids) != IMAGENETTE_WNIDS:
            raise FileNotFoundError(
                f"ImageNette under {self.folder} has unexpected class folders "
                f"(train: {train.wnids}, val: {official_val.wnids}).\nExpected layout:\n{self.expected_layout()}"
            )
        val, test = split_indices(len(official_val), (0.5, 0.5), self.seed)
        files = [Path(path) for dataset in (train, official_val) for path, _ in dataset._samples]
        splits = {"train": (train, list(range(len(train)))), "val": (official_val, val), "test": (official_val, test)}
        return splits, files
