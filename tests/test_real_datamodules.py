"""Real-image datamodules on tiny fake trees in each dataset's standard on-disk layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.imagenette import IMAGENETTE_CLASS_NAMES, IMAGENETTE_WNIDS, ImagenetteDataModule
from datamodules.mura import MuraDataModule
from datamodules.pet import PET_BREEDS, PetDataModule
from datamodules.transforms import resize_size

IMG = 32
# Pet images are 48 x 64; the pet is a white rectangle on the left, surrounded by a 2-pixel trimap border ring.
PET_H, PET_W, PET_BOX = 48, 64, (12, 36, 6, 30)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_pet(root: Path, per_class: int = 10, n_classes: int = 3) -> list[Path]:
    folder = root / "oxford-iiit-pet"
    top, bottom, left, right = PET_BOX
    image = np.zeros((PET_H, PET_W, 3), np.uint8)
    image[top:bottom, left:right] = 255
    trimap = np.full((PET_H, PET_W), 2, np.uint8)
    trimap[top - 2 : bottom + 2, left - 2 : right + 2] = 3
    trimap[top:bottom, left:right] = 1
    lists = {"trainval": [], "test": []}
    images = []
    for label, breed in enumerate(PET_BREEDS[:n_classes], start=1):
        for n in range(1, per_class + 1):
            name = f"{breed}_{n}"
            images.append(folder / "images" / f"{name}.jpg")
            _save(image if n % 3 else image[..., 0], images[-1])  # every third image is greyscale
            _save(trimap, folder / "annotations" / "trimaps" / f"{name}.png")
            species = 1 if breed[0].isupper() else 2
            lists["test" if n % 3 == 0 else "trainval"].append(f"{name} {label} {species} {label}\n")
    for split, lines in lists.items():
        (folder / "annotations" / f"{split}.txt").write_text("".join(lines))
    return images


def make_imagenette(root: Path, n_train: int = 3, n_val: int = 4) -> None:
    for split, count in (("train", n_train), ("val", n_val)):
        for label, wnid in enumerate(IMAGENETTE_WNIDS):
            for n in range(count):
                grey = np.full((20, 24, 3), 20 * (label + 1), np.uint8)  # the grey level encodes the class
                _save(grey if n else grey[..., 0], root / "imagenette2-160" / split / wnid / f"{wnid}_{n}.JPEG")


def make_mura(root: Path, n_train_patients: int = 20, n_valid_patients: int = 4) -> None:
    """Patient k has one study of 2 images (positive iff k is odd); patient00001 also has a second body part."""
    folder = root / "MURA-v1.1"
    for split, n_patients in (("train", n_train_patients), ("valid", n_valid_patients)):
        studies = [(f"XR_{'WRIST' if k % 2 else 'HAND'}", k, k % 2) for k in range(1, n_patients + 1)]
        studies.append(("XR_ELBOW", 1, 0))
        image_lines, study_lines = [], []
        for part, k, positive in studies:
            study = f"MURA-v1.1/{split}/{part}/patient{k:05d}/study1_{'positive' if positive else 'negative'}"
            study_lines.append(f"{study}/,{positive}\n")
            for n in (1, 2):
                image_lines.append(f"{study}/image{n}.png\n")
                _save(np.full((24, 20), 200 if positive else 50, np.uint8), root / study / f"image{n}.png")
        (folder / f"{split}_image_paths.csv").write_text("".join(image_lines))
        (folder / f"{split}_labeled_studies.csv").write_text("".join(study_lines))


@pytest.fixture(scope="module")
def pet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pet")
    make_pet(root)
    return root


@pytest.fixture(scope="module")
def imagenette_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenette")
    make_imagenette(root)
    return root


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mura")
    make_mura(root)
    return root


def _setup(cls, root: Path, **kwargs):
    dm = cls(root=str(root), img_size=IMG, batch_size=4, num_workers=0, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _check_batch(batch: dict, keys: set[str], batch_size: int) -> None:
    assert set(batch) == keys
    assert batch["image"].shape == (batch_size, 3, IMG, IMG) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].shape == (batch_size,) and batch["label"].dtype == torch.long
    if "mask" in batch:
        assert batch["mask"].shape == (batch_size, 1, IMG, IMG) and batch["mask"].dtype == torch.bool


def _split_indices(dm) -> list[list[int]]:
    return [dm.data_train.indices, dm.data_val.indices, dm.data_test.indices]


def test_classes_known_without_disk():
    assert PetDataModule("/nonexistent").num_classes == 37
    assert PetDataModule("/nonexistent").class_names[:2] == ("Abyssinian", "American Bulldog")
    assert ImagenetteDataModule("/nonexistent").num_classes == 10
    assert MuraDataModule("/nonexistent").class_names == ("negative", "positive")
    assert resize_size(224) == 256 and resize_size(32) == 37


def test_pet_batches_and_splits(pet_root: Path):
    dm = _setup(PetDataModule, pet_root)
    train, val, test = _split_indices(dm)
    assert (len(train), len(val), len(test)) == (24, 3, 3)  # 80/10/10 of all 30 images (trainval + test lists)
    assert set(train) | set(val) | set(test) == set(range(30)) and len(set(train) | set(val) | set(test)) == 30
    assert _split_indices(_setup(PetDataModule, pet_root, verify_images=False)) == [train, val, test]
    assert _split_indices(_setup(PetDataModule, pet_root, seed=0)) != [train, val, test]
    loader = dm.train_dataloader()
    assert len(loader) == 24 // 4  # drop_last
    batch = next(iter(loader))
    _check_batch(batch, {"image", "label", "mask", "index"}, 4)
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    labels = torch.cat([b["label"] for b in dm.test_dataloader()])
    source_labels = [dm.data_test.source[i][1][0] for i in dm.data_test.indices]
    assert labels.tolist() == source_labels


def _agreement(sample: dict) -> float:
    white = sample["image"].mean(0) > 0.5
    return (sample["mask"][0] == white).float().mean().item()


def test_pet_mask_follows_geometry(pet_root: Path):
    dm = _setup(PetDataModule, pet_root)
    sample = dm.data_val[0]
    # Eval transform by hand: 48x64 -> resize 37x49 -> centre crop 32: the box rows 12:36 -> 7:26, cols 6:30 -> 0:15.
    expected = torch.zeros(IMG, IMG, dtype=torch.bool)
    expected[7:26, 0:15] = True
    assert (sample["mask"][0] == expected).float().mean() > 0.97
    assert _agreement(sample) > 0.97
    # Train transform: random crops and flips move mask and image together; flips put the pet on both sides.
    torch.manual_seed(0)
    sides = set()
    for _ in range(12):
        sample = dm.data_train[0]
        assert _agreement(sample) > 0.9  # a mask left unflipped would agree on only ~60%
        cols = sample["mask"][0].nonzero()[:, 1].float()
        sides.add(bool(cols.mean() > IMG / 2))
    assert sides == {True, False}
    # The trimap border (value 3) is background by default and foreground on request.
    narrow = dm.data_val[0]["mask"]
    wide = _setup(PetDataModule, pet_root, border_as_foreground=True, verify_images=False).data_val[0]["mask"]
    assert wide.sum() > narrow.sum() and (wide & narrow).equal(narrow)


def test_pet_missing_root_and_layout(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as info:
        PetDataModule(str(tmp_path / "nowhere")).setup()
    message = str(info.value)
    assert "nowhere" in message and "oxford-iiit-pet" in message and "trimaps" in message
    assert "robots.ox.ac.uk/~vgg/data/pets" in message and "download=True" in message
    make_pet(tmp_path, per_class=1, n_classes=1)
    for png in (tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps").iterdir():
        png.unlink()
    (tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps").rmdir()
    with pytest.raises(FileNotFoundError, match="missing .*trimaps"):
        PetDataModule(str(tmp_path)).setup()


def test_pet_corrupt_image_named(tmp_path: Path):
    images = make_pet(tmp_path, per_class=4)
    images[1].write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=f"corrupt or unreadable image file .*{images[1].name}"):
        PetDataModule(str(tmp_path)).setup()
    truncated = tmp_path / "oxford-iiit-pet" / "annotations" / "trimaps" / f"{images[1].stem}.png"
    images[1].unlink()
    with pytest.raises(FileNotFoundError, match=images[1].name):
        PetDataModule(str(tmp_path)).setup()
    make_pet(tmp_path, per_class=4)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match=truncated.name):
        PetDataModule(str(tmp_path)).setup()


def test_imagenette_batches_splits_labels(imagenette_root: Path):
    dm = _setup(ImagenetteDataModule, imagenette_root, seed=44)
    assert len(dm.data_train) == 30 and dm.data_train.indices == list(range(30))
    _, val, test = _split_indices(dm)
    assert len(val) == len(test) == 20 and sorted(val + test) == list(range(40))
    assert dm.data_val.source is dm.data_test.source
    assert _split_indices(_setup(ImagenetteDataModule, imagenette_root, seed=44))[1:] == [val, test]
    assert _split_indices(_setup(ImagenetteDataModule, imagenette_root, seed=1))[1:] != [val, test]
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, {"image", "label", "index"}, 4)
    for sample in (dm.data_val[i] for i in range(len(dm.data_val))):  # grey level 20 * (label + 1), greyscale too
        assert sample["image"].mean().item() == pytest.approx(20 * (sample["label"].item() + 1) / 255, abs=0.02)
    assert IMAGENETTE_CLASS_NAMES[0] == "tench" and IMAGENETTE_WNIDS[0] == "n01440764"


def test_imagenette_missing_class_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="imagenette2-160.*fastai/imagenette"):
        ImagenetteDataModule(str(tmp_path)).setup()
    make_imagenette(tmp_path, n_train=1, n_val=1)
    folder = tmp_path / "imagenette2-160" / "val" / IMAGENETTE_WNIDS[3]
    next(folder.iterdir()).unlink()
    folder.rmdir()
    with pytest.raises(FileNotFoundError, match=f"missing .*val/{IMAGENETTE_WNIDS[3]}"):
        ImagenetteDataModule(str(tmp_path)).setup()


def test_mura_patient_split_and_labels(mura_root: Path):
    dm = _setup(MuraDataModule, mura_root)
    patients = dm.data_train.source.patients
    train = {patients[i] for i in dm.data_train.indices}
    val = {patients[i] for i in dm.data_val.indices}
    assert (len(train), len(val)) == (18, 2) and not train & val  # 90/10 of 20 patients, none in both
    assert len(dm.data_train) + len(dm.data_val) == 42 and len(dm.data_test) == 10  # patient00001 has 4 images
    assert dm.data_test.source.samples[0][0].parts[-5] == "valid"
    same = _setup(MuraDataModule, mura_root, verify_images=False)
    assert _split_indices(same) == _split_indices(dm)
    assert _split_indices(_setup(MuraDataModule, mura_root, seed=3)) != _split_indices(dm)
    batch = next(iter(dm.test_dataloader()))
    _check_batch(batch, {"image", "label", "index"}, 4)
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])  # greyscale converted to RGB
    for sample in (dm.data_test[i] for i in range(len(dm.data_test))):  # positive studies are bright
        assert sample["label"].item() == int(sample["image"].mean() > 0.5)
    workers = MuraDataModule(str(mura_root), num_workers=2, batch_size=8)
    workers.setup()
    loader = workers.train_dataloader()
    assert loader.persistent_workers and loader.drop_last and len(loader) == len(workers.data_train) // 8


def test_mura_errors(tmp_path: Path):
    dm = MuraDataModule(str(tmp_path / "none"), download=True)
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(FileNotFoundError, match="(?s)MURA-v1.1.*train_labeled_studies.csv.*stanfordmlgroup"):
            step()
    make_mura(tmp_path, n_train_patients=2, n_valid_patients=1)
    csv = tmp_path / "MURA-v1.1" / "train_labeled_studies.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="has no label in .*train_labeled_studies.csv"):
        MuraDataModule(str(tmp_path)).setup()
