"""Evaluation callback: ReX (Algorithm 3) on fixed test images of the trained classifier, with the section 6 metrics.

Images are the first `num_images` items of the datamodule's `data_<split>`; they are sharded across ranks
(rank::world_size), explained in batches, and the per-image results, maps and explanations gathered with all_gather
(padded to equal shard sizes). Rank 0 logs `rex/<metric>` and `rex/<metric>_std` (size, insertion, deletion, and IN /
OUT when the data has `mask` / `occluder_mask`), `rex/model_calls` and `rex/seconds` per image to every logger, and
overlays of `num_log` images (image, responsibility map, explanation) to W&B when a WandbLogger is attached, otherwise
PNGs, an npz of maps and explanations and a JSON of per-image results under `<trainer.log_dir>/rex/`.
Results also stay in `callback.results`.
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
from torch import Tensor
from torch.utils.data import default_collate

from attribution.evaluation import EvaluationCallback

from attribution.overlay import figure_array, save_overlay
from rex.explainer import ReX, ReXConfig
from rex.metrics import fraction_inside, fraction_outside, insertion_deletion

_COLUMNS = ("index", "size", "insertion", "deletion", "in", "out", "target", "confidence", "model_calls", "seconds",
            "valid")
_METRICS = ("size", "insertion", "deletion", "in", "out")


class ReXCallback(EvaluationCallback):
    """After fit/test: Algorithm 3 on fixed test images, section 6 metrics (Tables 1-3), overlays; DDP-sharded."""

    def __init__(
        self,
        num_images: int = 16,
        split: str = "test",
        rex: dict[str, Any] | ReXConfig | None = None,
        batch_size: int = 8,
        steps: int = 50,
        num_log: int = 4,
        run_after_fit: bool = True,
        run_after_test: bool = True,
        model_attr: str | None = "model",
    ) -> None:
        super().__init__(split, run_after_fit, run_after_test)
        self.config = rex if isinstance(rex, ReXConfig) else ReXConfig(**(rex or {}))
        self.num_images, self.batch_size, self.steps, self.num_log = num_images, batch_size, steps, num_log
        self.model_attr = model_attr
        self.results: dict[str, Any] = {}

    def _explain(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """ReX on one batch: per-image table rows (b, len(_COLUMNS)), maps (b, H, W), explanations (b, H, W)."""
        images = batch["image"]
        res = ReX(self.config).explain(model, images)
        explanations = res.explanations
        if explanations.dim() == 5:
            explanations = explanations[:, 0]
        _, _, ins, dele = insertion_deletion(model, images, res.maps, res.target, self.steps)
        nan = torch.full_like(ins, math.nan)
        inside = fraction_inside(explanations, batch["mask"]) if "mask" in batch else nan
        outside = fraction_outside(explanations, batch["occluder_mask"]) if "occluder_mask" in batch else nan
        b = images.shape[0]
        size = res.size if res.size.dim() == 1 else res.size[:, 0]
        cols = (batch["index"], size, ins, dele, inside, outside, res.target, res.confidence,
                torch.full_like(ins, res.model_calls / b), torch.full_like(ins, res.seconds / b), torch.ones_like(ins))
        table = torch.stack([torch.as_tensor(c, device=images.device).to(torch.float64) for c in cols], 1)
        return table, res.maps.float(), explanations[:, 0].float()

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, Any]:
        """Explain this rank's shard, gather every rank's results, and log them on rank 0."""
        dataset = self.dataset(trainer)
        indices = list(range(min(self.num_images, len(dataset))))
        mine, per_rank = self.shard(trainer, indices)
        model = self.classifier(pl_module)
        was_training = model.training
        model.eval()
        h, w = dataset[0]["image"].shape[-2:]
        dev = pl_module.device
        table = torch.zeros(per_rank, len(_COLUMNS), dtype=torch.float64, device=dev)
        maps = torch.zeros(per_rank, h, w, device=dev)
        expl = torch.zeros(per_rank, h, w, device=dev)
        images = torch.zeros(per_rank, 3, h, w, device=dev)
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start:start + self.batch_size]
            batch = default_collate([dataset[i] for i in chunk])
            batch = {k: v.to(dev) for k, v in batch.items() if isinstance(v, Tensor)}
            batch["index"] = torch.tensor(chunk, device=dev)
            rows = slice(start, start + len(chunk))
            table[rows], maps[rows], expl[rows] = self._explain(model, batch)
            images[rows] = batch["image"]
        model.train(was_training)
        gathered = [pl_module.all_gather(t) for t in (table, maps, expl, images)]
        if trainer.world_size > 1:
            gathered = [t.flatten(0, 1) for t in gathered]
        table, maps, expl, images = gathered
        keep = table[:, -1] > 0
        order = table[keep, 0].argsort()
        table, maps, expl, images = (t[keep][order].cpu() for t in (table, maps, expl, images))
        self.results = self._summarise(table, maps, expl.bool())
        if trainer.is_global_zero:
            self._log(trainer, stage, images)
        return self.results

    def _summarise(self, table: Tensor, maps: Tensor, expl: Tensor) -> dict[str, Any]:
        cols = dict(zip(_COLUMNS, table.T))
        summary: dict[str, Any] = {}
        for name in _METRICS:
            v = cols[name][~cols[name].isnan()]
            if v.numel():
                summary[name] = float(v.mean())
                summary[f"{name}_std"] = float(v.std(unbiased=False))
        summary["model_calls"] = float(cols["model_calls"].mean()) if len(table) else 0.0
        summary["seconds"] = float(cols["seconds"].mean()) if len(table) else 0.0
        return {"summary": summary, "per_image": {k: v for k, v in cols.items() if k != "valid"}, "maps": maps,
                "explanations": expl}

    def _log(self, trainer: L.Trainer, stage: str, images: Tensor) -> None:
        res = self.results
        metrics = {f"rex/{k}": v for k, v in res["summary"].items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        cols = res["per_image"]
        titles = [f"image {int(i)}: class {int(t)} (p = {float(c):.2f})"
                  for i, t, c in zip(cols["index"], cols["target"], cols["confidence"])]
        n_log = min(self.num_log, len(images))
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            arrays = [figure_array(images[i], res["maps"][i], titles[i], res["explanations"][i]) for i in range(n_log)]
            if arrays:
                wandb[0].log_image(key=f"rex/{stage}_overlays", images=arrays, caption=titles[:n_log],
                                   step=trainer.global_step)
            return
        out = Path(trainer.log_dir or trainer.default_root_dir) / "rex"
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n_log):
            save_overlay(out / f"{stage}_{int(cols['index'][i])}.png", images[i], res["maps"][i], titles[i],
                         res["explanations"][i], map_title="responsibility")
        np.savez_compressed(out / f"{stage}_maps.npz", index=cols["index"].long().numpy(), maps=res["maps"].numpy(),
                            explanations=res["explanations"].numpy())
        records = [{k: (None if math.isnan(float(v[j])) else float(v[j])) for k, v in cols.items()}
                   for j in range(len(cols["index"]))]
        (out / f"{stage}_rex.json").write_text(json.dumps({"summary": res["summary"], "images": records}, indent=1))
