"""Base of the evaluation callbacks: run an evaluation on fixed images of a datamodule split after fit and/or test."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


class EvaluationCallback(L.Callback):
    """Calls `evaluate(trainer, pl_module, stage)` after fit and/or test on the images of `data_<split>`."""

    def __init__(self, split: str = "test", run_after_fit: bool = True, run_after_test: bool = True) -> None:
        super().__init__()
        self.split, self.run_after_fit, self.run_after_test = split, run_after_fit, run_after_test

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_after_fit:
            self.evaluate(trainer, pl_module, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_after_test:
            self.evaluate(trainer, pl_module, "test")

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> Any:
        raise NotImplementedError

    def shard(self, trainer: L.Trainer, indices: list[int]) -> tuple[list[int], int]:
        """This rank's images (rank::world_size) and the padded shard length every rank gathers."""
        world = trainer.world_size
        return indices[trainer.global_rank :: world], max(1, math.ceil(len(indices) / world))

    def classifier(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The model to evaluate: `pl_module.<model_attr>`, or the module itself."""
        model_attr = getattr(self, "model_attr", None)
        return getattr(pl_module, model_attr) if model_attr else pl_module

    def dataset(self, trainer: L.Trainer) -> Any:
        """The datamodule's `data_<split>`, set up on demand."""
        dm = trainer.datamodule
        if dm is None:
            raise RuntimeError(f"{type(self).__name__} needs a datamodule with data_<split> datasets")
        if getattr(dm, f"data_{self.split}", None) is None:
            dm.setup({"test": "test", "val": "validate"}.get(self.split, "fit"))
        return getattr(dm, f"data_{self.split}")
