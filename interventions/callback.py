"""Evaluation callback: gradual-intervention test of the trained classifier on fixed test images, per property.

Images are the first `num_images` items of the datamodule's `data_<split>` whose label is not in `exclude_classes`;
they are sharded across ranks (rank::world_size) and the per-image results gathered with all_gather (padded to equal
shard sizes). Logged per property P on rank 0: `intervention/P/gradient_mean`, `.../significant_frac`,
`.../flip_rate` to every attached logger, and a plot of prediction vs x for `num_plot` images with the intervention
strip of the first image (to W&B if a WandbLogger is attached; otherwise a PNG plus a JSON of per-image results under
`<trainer.log_dir>/interventions/`). Results also stay in `callback.results[P]`. Properties are names from
`interventions.PROPERTIES` or a dict name -> factory(batch, dataset) -> intervention; the batch carries `index`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torch.utils.data import default_collate

from attribution.evaluation import EvaluationCallback

from interventions.gradual import gradual_intervention_test
from interventions.plot import figure_to_array, intervention_strip, plot_prediction_curve
from interventions.properties import PropertyFactory, get_property

_COLUMNS = ("index", "gradient", "p_value", "significant", "flip_count", "flipped", "target", "valid")


class GradualInterventionCallback(EvaluationCallback):
    """After fit/test: Algorithm 1 and E_x|dF/dx| per property on fixed test images (poster sections 3-4)."""

    def __init__(
        self,
        properties: list[str] | dict[str, PropertyFactory] = ("cue",),
        num_images: int = 32,
        num_steps: int = 100,
        num_permutations: int = 1000,
        delta: float = 0.01,
        plus_one: bool = False,
        num_plot: int = 4,
        split: str = "test",
        exclude_classes: list[int] | None = None,
        seed: int = 0,
        batch_size: int = 256,
        run_after_fit: bool = True,
        run_after_test: bool = True,
        model_attr: str | None = None,
    ) -> None:
        super().__init__(split, run_after_fit, run_after_test)
        names = properties.items() if isinstance(properties, dict) else ((p, get_property(p)) for p in properties)
        self.properties: dict[str, PropertyFactory] = dict(names)
        self.num_images, self.num_steps, self.num_permutations = num_images, num_steps, num_permutations
        self.delta, self.plus_one, self.num_plot = delta, plus_one, num_plot
        self.exclude_classes = set(exclude_classes or ())
        self.seed, self.batch_size = seed, batch_size
        self.model_attr = model_attr
        self.results: dict[str, dict[str, Any]] = {}

    def _select(self, dataset: Any) -> list[int]:
        chosen = []
        for i in range(len(dataset)):
            if len(chosen) == self.num_images:
                break
            if int(dataset[i]["label"]) not in self.exclude_classes:
                chosen.append(i)
        return chosen

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, dict[str, Any]]:
        """Run every property's test on this rank's shard, gather, and log on rank 0."""
        dataset = self.dataset(trainer)
        indices = self._select(dataset)
        mine, per_rank = self.shard(trainer, indices)
        model = self.classifier(pl_module)
        was_training = model.training
        model.eval()
        batch = None
        if mine:
            batch = default_collate([dataset[i] for i in mine])
            batch = {k: v.to(pl_module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            batch["index"] = torch.tensor(mine, device=pl_module.device)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        for name, factory in self.properties.items():
            table = torch.zeros(per_rank, len(_COLUMNS), dtype=torch.float64, device=pl_module.device)
            curves = torch.zeros(per_rank, self.num_steps, dtype=torch.float64, device=pl_module.device)
            intervention = None
            if batch is not None:
                intervention = factory(batch, dataset)
                gen = torch.Generator().manual_seed(self.seed + 7919 * trainer.global_rank)
                res = gradual_intervention_test(
                    model, batch["image"], intervention, self.num_steps, self.num_permutations, self.delta, gen,
                    plus_one=self.plus_one, batch_size=self.batch_size,
                )
                cols = (batch["index"], res.gradient, res.p_value, res.significant, res.flip_count, res.flipped,
                        res.target, torch.ones_like(res.gradient))
                table[: len(mine)] = torch.stack([c.to(torch.float64) for c in cols], 1)
                curves[: len(mine)] = res.curve.to(torch.float64)
            table, curves = pl_module.all_gather(table), pl_module.all_gather(curves)
            if trainer.world_size > 1:
                table, curves = table.flatten(0, 1), curves.flatten(0, 1)
            keep = table[:, -1] > 0
            order = table[keep, 0].argsort()
            table, curves = table[keep][order].cpu(), curves[keep][order].cpu()
            self.results[name] = self._summarise(table, curves)
            if trainer.is_global_zero:
                self._log(trainer, name, stage, log_dir, curves, batch, intervention)
        model.train(was_training)
        return self.results

    def _summarise(self, table: Tensor, curves: Tensor) -> dict[str, Any]:
        cols = dict(zip(_COLUMNS, table.T))
        return {
            "gradient_mean": float(cols["gradient"].mean()),
            "significant_frac": float(cols["significant"].mean()),
            "flip_rate": float(cols["flipped"].mean()),
            "index": cols["index"].long(),
            "gradient": cols["gradient"],
            "p_value": cols["p_value"],
            "significant": cols["significant"].bool(),
            "flip_count": cols["flip_count"].long(),
            "target": cols["target"].long(),
            "curves": curves.float(),
        }

    def _log(
        self, trainer: L.Trainer, name: str, stage: str, log_dir: Path, curves: Tensor, batch: Any, intervention: Any
    ) -> None:
        res = self.results[name]
        metrics = {f"intervention/{name}/{k}": res[k] for k in ("gradient_mean", "significant_frac", "flip_rate")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        n_plot = min(self.num_plot, len(curves))
        if n_plot == 0:
            return
        strip, strip_x = intervention_strip(batch["image"], intervention, 0) if batch is not None else (None, None)
        fig = plot_prediction_curve(
            torch.linspace(0, 1, self.num_steps), curves[:n_plot],
            strip, strip_x, labels=[f"image {int(i)}" for i in res["index"][:n_plot]],
            title=f"{name} ({stage}); strip: image {int(res['index'][0])}",
        )
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb:
            key = f"intervention/{name}/curves"
            wandb[0].log_image(key=key, images=[figure_to_array(fig)], step=trainer.global_step)
            return
        out = log_dir / "interventions"
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{stage}_{name}.png", dpi=100)
        records = [
            {"index": int(i), "S": float(g), "p": float(p), "significant": bool(s), "flips": int(f), "target": int(t)}
            for i, g, p, s, f, t in zip(res["index"], res["gradient"], res["p_value"], res["significant"],
                                         res["flip_count"], res["target"])
        ]
        summary = {k: res[k] for k in ("gradient_mean", "significant_frac", "flip_rate")}
        (out / f"{stage}_{name}.json").write_text(json.dumps({"summary": summary, "images": records}, indent=1))
