"""MURA musculoskeletal radiographs: binary abnormality per study, read from the dataset's own CSV files."""

import csv
from pathlib import Path, PurePosixPath

from PIL import Image
from torch.utils.data import Dataset

from datamodules.base import RealImageDataModule, split_indices

MURA_CLASS_NAMES = ("negative", "positive")
MURA_FOLDER = "MURA-v1.1"
MURA_URL = "https://stanfordmlgroup.github.io/competitions/mura/"


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as file:
        return [row for row in csv.reader(file) if row]


class MuraImages(Dataset):
    """MURA images of one official split, labelled by their study, with patient ids (Salvage Sec. 5.1 data)."""

    def __init__(self, root: Path, image_csv: Path, study_csv: Path) -> None:
        studies = {}
        for row in _read_rows(study_csv):
            if len(row) != 2 or row[1].strip() not in ("0", "1"):
                raise ValueError(f"{study_csv}: expected lines '<study folder>/,<0 or 1>', got {','.join(row)!r}")
            studies[row[0].strip().rstrip("/")] = int(row[1])
        self.samples: list[tuple[Path, int]] = []
        self.patients: list[str] = []
        for row in _read_rows(image_csv):
            relative = PurePosixPath(row[0].strip())
            parts = relative.parts
            if len(parts) != 6 or parts[0] != MURA_FOLDER or not parts[3].startswith("patient"):
                raise ValueError(
                    f"{image_csv}: expected lines '{MURA_FOLDER}/<split>/XR_<PART>/patient<id>/study<n>_<label>/"
                    f"image<n>.png', got {row[0]!r}"
                )
            study = str(relative.parent)
            if study not in studies:
                raise ValueError(f"{image_csv}: study {study!r} of image {row[0]!r} has no label in {study_csv}")
            self.samples.append((root / relative, studies[study]))
            self.patients.append(parts[3])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label


class MuraDataModule(RealImageDataModule):
    """MURA, official train split 90/10 by patient into train/val, official valid as test (Salvage Sec. 5.1)."""

    name = "MURA"
    class_names = MURA_CLASS_NAMES

    @property
    def folder(self) -> Path:
        """The dataset folder, root/MURA-v1.1 (Salvage Sec. 5.1 data)."""
        return self.root / MURA_FOLDER

    def expected_layout(self) -> str:
        """On-disk layout of MURA v1.1 and where it comes from (Salvage Sec. 5.1)."""
        return (
            f"  {self.folder}/train_image_paths.csv, valid_image_paths.csv "
            f"(lines '{MURA_FOLDER}/train/XR_<PART>/patient<id>/study<n>_<positive|negative>/image<n>.png')\n"
            f"  {self.folder}/train_labeled_studies.csv, valid_labeled_studies.csv "
            f"(lines '{MURA_FOLDER}/train/XR_<PART>/patient<id>/study<n>_<label>/,<0|1>')\n"
            f"  {self.folder}/train/ and {self.folder}/valid/ with the images those lines name\n"
            f"MURA needs registration and cannot be downloaded automatically: request it at {MURA_URL} "
            f"and extract MURA-v1.1.zip into {self.root}/."
        )

    def required_paths(self) -> list[Path]:
        """The four CSV files and the two image folders (Salvage Sec. 5.1 data)."""
        csvs = [f"{split}_{kind}.csv" for split in ("train", "valid") for kind in ("image_paths", "labeled_studies")]
        return [self.folder / name for name in (*csvs, "train", "valid")]

    def fetch(self) -> None:
        """MURA has no public download; fail with where to request it (Salvage Sec. 5.1 data)."""
        raise FileNotFoundError(
            f"MURA not found under root={str(self.root)!r} and download=True cannot fetch it.\n"
            f"Expected layout:\n{self.expected_layout()}"
        )

    def build_splits(self) -> tuple[dict[str, tuple[Dataset, list[int]]], list[Path]]:
        """Patients of the official train split 90/10 into train/val, official valid = test (ViT-Shapley, Sec. 5.1)."""
        official_train, official_valid = (
            MuraImages(self.root, *(self.folder / f"{split}_{kind}.csv" for kind in ("image_paths", "labeled_studies")))
            for split in ("train", "valid")
        )
        patients = sorted(set(official_train.patients))
        _, val_ids = split_indices(len(patients), (0.9, 0.1), self.seed)
        val_patients = {patients[i] for i in val_ids}
        in_val = [patient in val_patients for patient in official_train.patients]
        train = [index for index, flag in enumerate(in_val) if not flag]
        val = [index for index, flag in enumerate(in_val) if flag]
        files = [path for dataset in (official_train, official_valid) for path, _ in dataset.samples]
        splits = {
            "train": (official_train, train),
            "val": (official_train, val),
            "test": (official_valid, list(range(len(official_valid)))),
        }
        return splits, files
