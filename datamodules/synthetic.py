"""The project's ground-truth benchmark: procedural shape scenes with object masks, spurious cues and occluders."""
from __future__ import annotations

import os
from dataclasses import asdict

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from datamodules.base import evaluation_sampler
from datamodules.scenes import CLASS_SHAPES, CueConfig, render_scene


_RENDERED: dict[tuple, dict[str, Tensor]] = {}


class SyntheticScenes(Dataset):
    """`size` scenes of one split, rendered once into memory (8-bit, like photos) and served as dicts.

    Rendered scenes are kept for the life of the process, keyed by everything that decides them, so the stages of a
    pipeline (and a smaller split of the same scenes, which is a prefix) render each scene once.
    """

    def __init__(
        self,
        split: str,
        size: int,
        img_size: int = 64,
        seed: int = 0,
        max_distractors: int = 3,
        cue: CueConfig | None = None,
        occluders: int = 0,
        progress: bool = True,
    ) -> None:
        self.split, self.size, self.img_size, self.seed = split, size, img_size, seed
        self.max_distractors, self.cue, self.occluders = max_distractors, cue, occluders
        self.cue_color = torch.tensor(cue.color) if cue is not None else None
        self.cue_class = cue.target_class if cue is not None else None
        self._store = self._prerender(progress)

    def _prerender(self, progress: bool) -> dict[str, Tensor]:
        key = (self.seed, self.split, self.img_size, self.max_distractors, self.cue, self.occluders)
        done = _RENDERED.get(key)
        have = len(done["label"]) if done is not None else 0
        if have < self.size:
            missing = _Renderer(self, start=have)
            workers = min(8, os.cpu_count() or 1) if len(missing) >= 2000 else 0
            loader = DataLoader(missing, batch_size=256, num_workers=workers)
            chunks = list(tqdm(loader, desc=f"rendering {self.split} scenes", disable=not progress, leave=False))
            new = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
            done = new if done is None else {k: torch.cat([done[k], new[k]]) for k in done}
            _RENDERED[key] = done
        return {k: v[: self.size] for k, v in done.items()}

    def render(self, index: int, cue_strength: float | None = None) -> dict[str, Tensor]:
        """Re-render scene `index`, optionally with the cue strength overridden (0 = no cue)."""
        return render_scene(
            self.seed, self.split, index, self.img_size, self.max_distractors, self.cue, self.occluders, cue_strength
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {k: v[index] for k, v in self._store.items()}
        item["image"] = item["image"].float() / 255
        item["index"] = index
        return item


class _Renderer(Dataset):
    """Scenes `start`.. `scenes.size` - 1, rendered in loader workers and stored as 8-bit images (a quarter of the
    memory of float ones while the chunks are collected: 40 000 scenes at 112 px hold 1.5 GB, not 6)."""

    def __init__(self, scenes: SyntheticScenes, start: int = 0) -> None:
        self.scenes, self.start = scenes, start

    def __len__(self) -> int:
        return self.scenes.size - self.start

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.scenes.render(self.start + index)
        item["image"] = (item["image"] * 255).round().to(torch.uint8)
        return item


class SyntheticDataModule(L.LightningDataModule):
    """Six shape classes on textured backgrounds; deterministic in (seed, split, index); no files on disk."""

    def __init__(
        self,
        img_size: int = 64,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        n_train: int = 10000,
        n_val: int = 1000,
        n_test: int = 1000,
        max_distractors: int = 3,
        cue: CueConfig | None = None,
        occluders: int = 0,
    ) -> None:
        super().__init__()
        if img_size < 16:
            raise ValueError(f"img_size must be at least 16 px, got {img_size}")
        for name, value in (("batch_size", batch_size), ("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if max_distractors < 0 or occluders < 0:
            raise ValueError("max_distractors and occluders must be >= 0")
        cue = CueConfig(**cue) if isinstance(cue, dict) else cue
        self.save_hyperparameters(ignore=["cue"])
        self.hparams["cue"] = asdict(cue) if cue is not None else None
        self.img_size, self.batch_size, self.num_workers, self.seed = img_size, batch_size, num_workers, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.max_distractors, self.cue, self.occluders = max_distractors, cue, occluders
        self.num_classes = len(CLASS_SHAPES)
        self.class_names = list(CLASS_SHAPES)

    def scenes(self, split: str) -> SyntheticScenes:
        """Render the scenes of one split."""
        return SyntheticScenes(
            split, self.sizes[split], self.img_size, self.seed, self.max_distractors, self.cue, self.occluders
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and not hasattr(self, "data_train"):
            self.data_train, self.data_val = self.scenes("train"), self.scenes("val")
        if stage in ("validate",) and not hasattr(self, "data_val"):
            self.data_val = self.scenes("val")
        if stage in ("test", "predict", None) and not hasattr(self, "data_test"):
            self.data_test = self.scenes("test")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else evaluation_sampler(dataset),
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)
