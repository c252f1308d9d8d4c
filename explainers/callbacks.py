"""Base of the evaluation callbacks: an evaluation on fixed images of a datamodule split after fit and/or test.

The base owns everything but the evaluation itself: it picks the images (the first `num_images` of `data_<split>`),
cuts them into batches of `batch_size` and deals whole batches to the ranks (batch k to rank k % world_size, so a
batch holds the same images, and a seeded method gives the same results, on any number of devices), gathers every
rank's per-image rows with all_gather
(padded to equal shard sizes, padding dropped, sorted by image index, so no image counts twice and none is lost),
summarises them (`ScoreSummary`) and logs on rank 0: the summary to every logger; figures and a per-image table to
W&B when a WandbLogger is attached, otherwise PNGs, a JSON of per-image results and an npz of the arrays under
`<trainer.log_dir>/<folder>/`. A subclass says only what to compute per batch (`compute`) and which figures to draw.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import default_collate

from explainers.figures import figure_to_array
from explainers.metrics import summarise

Rows = tuple[dict[str, Tensor], dict[str, Tensor]]


class EvaluationCallback(L.Callback):
    """Runs `compute(model, batch, dataset, task)` on fixed images after fit and/or test; see the module docstring."""

    #: folder under the log dir and metric prefix
    folder = "evaluation"
    #: npz file name pattern ({stage}, {task})
    npz_name = "{stage}_{task}"
    #: arrays kept in the results for the figures but not written to the npz (e.g. the images themselves)
    unsaved: tuple[str, ...] = ()

    def __init__(self, num_images: int = 16, split: str = "test", batch_size: int = 8, num_log: int = 4,
                 run_after_fit: bool = True, run_after_test: bool = True, model_attr: str | None = "model") -> None:
        super().__init__()
        self.num_images, self.split, self.batch_size, self.num_log = num_images, split, batch_size, num_log
        self.run_after_fit, self.run_after_test, self.model_attr = run_after_fit, run_after_test, model_attr
        self.results: dict[str, Any] = {}

    # --- what a subclass says -------------------------------------------------------------------------------------
    def tasks(self) -> list[str]:
        """Names of the evaluations run on the same images (e.g. one per property); each is logged on its own."""
        return [self.folder]

    def select(self, dataset: Any) -> list[int]:
        """Dataset indices of the images to evaluate."""
        return list(range(min(self.num_images, len(dataset))))

    def compute(self, model: nn.Module, batch: dict[str, Any], dataset: Any, task: str) -> Rows:
        """Per-image scalar columns {name: (b,)} and arrays {name: (b, ...)} of one batch (`batch["index"]` holds the
        dataset indices, `batch["batch_idx"]` the batch's number, the same on any number of devices)."""
        raise NotImplementedError

    def summarise(self, task: str, columns: dict[str, Tensor], arrays: dict[str, Tensor]) -> dict[str, Any]:
        """The results of a task from its gathered columns and arrays (default: summary, per-image columns, arrays)."""
        names = [k for k in columns if k != "index"]
        rows = [{k: float(v[j]) for k, v in columns.items()} for j in range(len(columns["index"]))]
        return {"summary": summarise(rows, names), "per_image": columns, **arrays}

    def metrics(self, task: str, results: dict[str, Any]) -> dict[str, float]:
        """Scalars to log to every logger."""
        return {f"{task}/{k}": v for k, v in results["summary"].items() if not k.endswith(("_n", "_nan"))}

    def figures(self, task: str, stage: str, results: dict[str, Any]) -> list[tuple[str, Figure]]:
        """(name, figure) pairs to log."""
        return []

    def row_images(self, task: str, results: dict[str, Any]) -> dict[str, list[np.ndarray]]:
        """Pictures per image (column name -> one RGB uint8 array per row of `per_image`) for the W&B table; none by
        default."""
        return {}

    # --- what the base does -----------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_after_fit:
            self.evaluate(trainer, pl_module, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_after_test:
            self.evaluate(trainer, pl_module, "test")

    def model(self, pl_module: L.LightningModule) -> nn.Module:
        """The model to evaluate: `pl_module.<model_attr>`, or the module itself."""
        return getattr(pl_module, self.model_attr) if self.model_attr else pl_module

    def dataset(self, trainer: L.Trainer) -> Any:
        """The datamodule's `data_<split>`, set up on demand."""
        dm = trainer.datamodule
        if dm is None:
            raise RuntimeError(f"{type(self).__name__} needs a datamodule with data_<split> datasets")
        if getattr(dm, f"data_{self.split}", None) is None:
            dm.setup({"test": "test", "val": "validate"}.get(self.split, "fit"))
        return getattr(dm, f"data_{self.split}")

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, Any]:
        """Evaluate this rank's shard of the images for every task, gather, summarise and log on rank 0."""
        dataset = self.dataset(trainer)
        indices = self.select(dataset)
        world, size = trainer.world_size, self.batch_size
        batches = [indices[i:i + size] for i in range(0, len(indices), size)]
        mine = range(trainer.global_rank, len(batches), world)
        per_rank = max(1, math.ceil(len(batches) / world)) * size
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast: every rank asks
        model = self.model(pl_module)
        was_training = model.training
        model.eval()
        dev = pl_module.device
        for task in self.tasks():
            columns: dict[str, Tensor] = {}
            arrays: dict[str, Tensor] = {}
            # a rank without a batch of its own evaluates batch 0 as padding, so that every rank gathers the same keys
            for slot, k in enumerate(mine if len(mine) or not batches else [0]):
                chunk = batches[k]
                batch = default_collate([dataset[i] for i in chunk])
                batch = {key: v.to(dev) if isinstance(v, Tensor) else v for key, v in batch.items()}
                batch["index"], batch["batch_idx"] = torch.tensor(chunk, device=dev), k
                scores, arrs = self.compute(model, batch, dataset, task)
                rows = slice(slot * size, slot * size + len(chunk))
                valid = torch.full((len(chunk),), float(len(mine) > 0), device=dev)
                scores = {"index": batch["index"], **scores, "valid": valid}
                for store, values, dtype in ((columns, scores, torch.float64), (arrays, arrs, None)):
                    for key, v in values.items():
                        v = torch.as_tensor(v, device=dev)
                        v = v.to(dtype) if dtype is not None else v
                        if key not in store:
                            store[key] = torch.zeros((per_rank, *v.shape[1:]), dtype=v.dtype, device=dev)
                        store[key][rows] = v
            columns, arrays = self._gather(pl_module, columns, arrays, world)
            self.results[task] = self.summarise(task, columns, arrays)
            if trainer.is_global_zero:
                self._log(trainer, task, stage, log_dir)
        model.train(was_training)
        return self.results

    def _gather(self, pl_module: L.LightningModule, columns: dict[str, Tensor], arrays: dict[str, Tensor],
                world: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every rank's rows, padding dropped, sorted by image index (all ranks must hold the same keys)."""
        names = sorted(columns), sorted(arrays)
        flags = {k for k, v in arrays.items() if v.dtype == torch.bool}
        gathered = [pl_module.all_gather(store[k].to(torch.uint8) if k in flags else store[k])
                    for store, keys in zip((columns, arrays), names) for k in keys]
        if world > 1:
            gathered = [t.flatten(0, 1) for t in gathered]
        by_name = dict(zip([*names[0], *names[1]], gathered))
        if not by_name:
            return {"index": torch.zeros(0)}, {}
        keep = by_name["valid"] > 0
        order = by_name["index"][keep].argsort()
        out = {k: v[keep][order].cpu() for k, v in by_name.items()}
        cols = {k: out[k] for k in names[0] if k != "valid"}
        cols["index"] = cols["index"].long()
        return cols, {k: out[k].bool() if k in flags else out[k] for k in names[1]}

    def _log(self, trainer: L.Trainer, task: str, stage: str, log_dir: Path) -> None:
        results = self.results[task]
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics(task, results), step=trainer.global_step)
            logger.save()
        figures = self.figures(task, stage, results)
        columns = results.get("per_image") or {k: v for k, v in results.items()
                                               if isinstance(v, Tensor) and v.dim() == 1}
        records = [{k: _plain(v[j]) for k, v in columns.items()} for j in range(len(columns["index"]))]
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            if figures:
                wandb[0].log_image(key=f"{task}/{stage}_figures", images=[figure_to_array(f) for _, f in figures],
                                   caption=[n for n, _ in figures], step=trainer.global_step)
            if records:
                import wandb as wb

                pictures = self.row_images(task, results)
                data = [[*(wb.Image(p[j]) for p in pictures.values()), *r.values()] for j, r in enumerate(records)]
                wandb[0].log_table(key=f"{task}/{stage}_images", columns=[*pictures, *records[0]], data=data,
                                   step=trainer.global_step)
            return
        out = log_dir / self.folder
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in figures:
            fig.savefig(out / f"{name}.png", dpi=100)
        arrays = {k: v.numpy() for k, v in results.items()
                  if isinstance(v, Tensor) and v.dim() > 1 and k not in self.unsaved}
        if arrays:
            np.savez_compressed(out / f"{self.npz_name.format(stage=stage, task=task)}.npz",
                                index=columns["index"].numpy(), **arrays)
        summary = results.get("summary") or {k: v for k, v in results.items() if isinstance(v, (int, float))}
        (out / f"{stage}_{task.replace('/', '_')}.json").write_text(
            json.dumps({"summary": summary, "images": records}, indent=1))


def _plain(value: Tensor) -> float | int | bool | None:
    """A JSON value of a 0-d tensor (NaN as null)."""
    if value.dtype == torch.bool:
        return bool(value)
    if not value.is_floating_point():
        return int(value)
    v = float(value)
    return None if math.isnan(v) else v
