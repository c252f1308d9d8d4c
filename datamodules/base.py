"""Shared machinery of the real-image datamodules: dict samples, image verification, split helpers, loaders."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, random_split
from tqdm.auto import tqdm

from datamodules.transforms import eval_transform, train_transform

ToSample = Callable[[Any, Any], dict[str, Any]]


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, a sampler that deals each evaluation item to exactly one rank (no padding repeats, so test metrics
    count every image once, as on one device); None (sequential) on one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


def verify_images(paths: Sequence[Path | str], name: str) -> None:
    """Header-check every image file once with PIL before training (bad-input guard of the Salvage Sec. 5.1 data)."""
    for path in tqdm(paths, desc=f"verifying {name} images", unit="img", leave=False):
        try:
            with Image.open(path) as image:
                image.verify()
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{name}: image file {path} is listed by the dataset but missing on disk; "
                "re-extract the dataset archive, or pass verify_images=False to skip this check"
            ) from err
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"{name}: corrupt or unreadable image file {path} ({type(err).__name__}: {err}); "
                "replace it with an intact copy (re-extract the dataset archive), "
                "or pass verify_images=False to skip this check"
            ) from err


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Seeded random partition of range(n) by fractions, each part sorted (ViT-Shapley splits, Salvage Sec. 5.1)."""
    parts = random_split(range(n), fractions, generator=torch.Generator().manual_seed(seed))
    return [sorted(part.indices) for part in parts]


def missing_paths(paths: Sequence[Path]) -> list[Path]:
    """Paths of an expected on-disk layout that do not exist (layout check of the Salvage Sec. 5.1 data)."""
    return [path for path in paths if not path.exists()]


class TransformedSubset(Dataset):
    """Items `indices` of an (image, target) dataset as transformed dict samples (Salvage Sec. 5.1 data)."""

    def __init__(self, source: Dataset, indices: Sequence[int], transform: Callable, to_sample: ToSample) -> None:
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.to_sample = to_sample

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, target = self.source[self.indices[index]]
        sample = self.transform(self.to_sample(image, target))
        return {**{key: value.as_subclass(torch.Tensor) for key, value in sample.items()}, "index": index}


class RealImageDataModule(LightningDataModule, ABC):
    """Base of the Pet/ImageNette/MURA datamodules: seeded splits, v2 transforms, verified images (Salvage Sec. 5.1)."""

    name: str = "dataset"
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        seed: int = 44,
        download: bool = False,
        verify_images: bool = True,
    ) -> None:
        super().__init__()
        if img_size <= 0 or batch_size <= 0 or num_workers < 0:
            raise ValueError(
                f"{self.name}: img_size and batch_size must be positive and num_workers >= 0, "
                f"got img_size={img_size}, batch_size={batch_size}, num_workers={num_workers}"
            )
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self.verify_images = verify_images
        self.num_classes = len(self.class_names)
        self.data_train: TransformedSubset | None = None
        self.data_val: TransformedSubset | None = None
        self.data_test: TransformedSubset | None = None

    @abstractmethod
    def expected_layout(self) -> str:
        """Human-readable on-disk layout and data source, for error messages (Salvage Sec. 5.1 data)."""

    @abstractmethod
    def required_paths(self) -> list[Path]:
        """Folders and files that must exist under root (Salvage Sec. 5.1 data)."""

    @abstractmethod
    def fetch(self) -> None:
        """Download and extract the dataset into root (Salvage Sec. 5.1 data)."""

    @abstractmethod
    def build_splits(self) -> tuple[dict[str, tuple[Dataset, list[int]]], list[Path]]:
        """Per split (source dataset, indices), and every image file to verify (Salvage Sec. 5.1 splits)."""

    def to_sample(self, image: Any, target: Any) -> dict[str, Any]:
        """Dict sample from a source item, before transforms (Salvage Sec. 5.1 data)."""
        return {"image": image, "label": torch.tensor(target, dtype=torch.long)}

    def check_layout(self) -> None:
        """Fail naming the expected layout and the data source when root or its parts are missing (Salvage Sec. 5.1)."""
        missing = missing_paths(self.required_paths()) if self.root.is_dir() else [self.root]
        if missing:
            listed = ", ".join(str(path) for path in missing[:4]) + (
                f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            )
            raise FileNotFoundError(
                f"{self.name} not found under root={str(self.root)!r}: missing {listed}.\n"
                f"Expected layout:\n{self.expected_layout()}"
            )

    def prepare_data(self) -> None:
        """Download the dataset when asked to and it is absent (Salvage Sec. 5.1 data)."""
        if self.download and missing_paths(self.required_paths()):
            self.fetch()

    def setup(self, stage: str | None = None) -> None:
        """Check the layout, build the seeded splits and verify every image once (Salvage Sec. 5.1 splits)."""
        if self.data_train is not None:
            return
        self.check_layout()
        splits, files = self.build_splits()
        if self.verify_images:
            verify_images(files, self.name)
        train, evaluation = train_transform(self.img_size), eval_transform(self.img_size)
        self.data_train = TransformedSubset(*splits["train"], train, self.to_sample)
        self.data_val = TransformedSubset(*splits["val"], evaluation, self.to_sample)
        self.data_test = TransformedSubset(*splits["test"], evaluation, self.to_sample)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{self.name}: call setup() before requesting a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(dataset),
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, last incomplete batch dropped (Salvage Sec. 5.1)."""
        return self._loader(self.data_train, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order (Salvage Sec. 5.1)."""
        return self._loader(self.data_val, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order (Salvage Sec. 5.1)."""
        return self._loader(self.data_test, train=False)
