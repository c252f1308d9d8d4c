"""What explain.py runs on: the models of a checkpoint or an outside model (`evaluation.outside`), and the images."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datamodules.transforms import RESIZE_RATIO
from evaluation.discovery import discover
from evaluation.loaded import LoadedModels
from evaluation.outside import factory_model, is_outside_spec, program_model, read_classes, timm_model
from models.stages import available_stages, load_stage


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (torch.jit.save) holds compiled code/ entries; plain checkpoints do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist())


def load_models(path: str | Path, img_size: int | None = None, grid: int = 8,
                extra: dict[str, str] | None = None, weights: str = "pretrained",
                classes: str | Path | None = None) -> LoadedModels:
    """A checkpoint of any stage (weights_only); `timm:NAME` (with `weights`: pretrained, random or a file) or
    `package.module:factory` (white boxes); a TorchScript or torch.export (.pt2) file (a black box on images in
    [0, 1] -> logits); plus checkpoints of further stages (`extra`: stage name -> path, e.g. a bridge). `classes`:
    a file of class names, one per line."""
    discover()
    spec, path = str(path), Path(path)
    if is_outside_spec(spec):
        loaded = (timm_model(spec[5:], img_size, grid, weights) if spec.startswith("timm:")
                  else factory_model(spec, img_size, grid))
    elif not path.is_file():
        raise SystemExit(f"error: checkpoint not found: {spec!r}")
    elif is_torchscript(path) or path.suffix == ".pt2":
        loaded = program_model(path, img_size, grid)
    else:
        module = _stage(path)
        hp = module.hparams
        size = hp.get("img_size") or (hp.get("backbone_spec") or {}).get("img_size") or img_size or 224
        provided = _provides(module, path)
        if "classifier" not in provided:
            holders = [s for s in available_stages() if s not in (extra or {}) and s != module.stage]
            raise SystemExit(f"error: {str(path)!r} is a {module.stage} checkpoint, which holds no classifier to explain; "
                             f"give a {' / '.join(holders)} checkpoint as --ckpt"
                             + (f" and this one as --{module.stage} PATH" if module.stage else ""))
        loaded = LoadedModels(provided, module.stage, int(size), [module])
    for stage, extra_path in (extra or {}).items():
        module = _stage(Path(extra_path), stage)
        loaded.models.update({k: v for k, v in _provides(module, extra_path).items() if k != "classifier"})
        loaded.modules.append(module)
    if classes is not None:
        loaded.class_names = read_classes(classes)
    return loaded


def _stage(path: Path, expect: str | None = None) -> nn.Module:
    try:
        return load_stage(path, expect).eval()
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err


def _provides(module: Any, path: str | Path) -> dict[str, nn.Module]:
    try:
        return module.provides()
    except FileNotFoundError as err:
        raise SystemExit(f"error: {str(path)!r}: {err}") from err


def _fit_image(img: Image.Image, name: str, size: int, crop_pct: float) -> Image.Image:
    notes = []
    if img.mode != "RGB":
        notes.append(f"mode {img.mode} -> RGB")
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    if img.size != (size, size):
        shorter = round(size / crop_pct)
        notes.append(f"{img.size[0]}x{img.size[1]}: shorter side resized to {shorter} px, centre {size}x{size} "
                     f"crop, as the model's evaluation transform")
        img = v2.CenterCrop(size)(v2.Resize(shorter, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(img))
    if notes:
        print(f"note: {name}: converted ({'; '.join(notes)})")
    return img


def load_image(path: str | Path, size: int, crop_pct: float = 1 / RESIZE_RATIO) -> Tensor:
    """An image file as (3, size, size) float in [0, 1]: converted to RGB, and an image of another size resized
    (shorter side to size / crop_pct) and centre-cropped, each with a printed note."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: image not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            img = _fit_image(img, path.name, size, crop_pct)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise SystemExit(f"error: cannot read image {str(path)!r}: {err}") from err
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Image files as dataset items {image, name, index}."""

    def __init__(self, paths: list[str], size: int, crop_pct: float = 1 / RESIZE_RATIO) -> None:
        self.images = [load_image(p, size, crop_pct) for p in paths]
        stems = [Path(p).stem for p in paths]
        self.names = [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "name": self.names[i], "index": i}


class NamedSplit(Dataset):
    """The first `limit` items of a datamodule split, each with a name and its index in the split."""

    def __init__(self, dataset: Dataset, split: str, limit: int | None) -> None:
        self.dataset, self.split = dataset, split
        self.n = len(dataset) if limit is None else min(limit, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item.update(name=f"{self.split}_{i:05d}", index=i)
        return item
