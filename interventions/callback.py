"""Evaluation callback: gradual-intervention test of the trained classifier on fixed test images, per property.

Images are the first `num_images` items of the datamodule's `data_<split>` whose label is not in `exclude_classes`.
Logged per property P on rank 0: `intervention/P/gradient_mean`, `.../significant_frac`, `.../flip_rate` to every
logger, and a plot of prediction vs x for `num_plot` images with the intervention strip of the first image.
Sharding, gathering and logging are `explainers.callbacks.EvaluationCallback`'s; results stay in
`callback.results[P]`. Properties are names from `interventions.PROPERTIES` or a dict name -> factory(batch,
dataset) -> intervention; the batch carries `index`.
"""
from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from explainers.callbacks import EvaluationCallback, Rows
from explainers.figures import plot_prediction_curve
from interventions.gradual import gradual_intervention_test
from interventions.plot import intervention_strip
from interventions.properties import PropertyFactory, get_property

_MEANS = {"gradient_mean": "gradient", "significant_frac": "significant", "flip_rate": "flipped"}


class GradualInterventionCallback(EvaluationCallback):
    """After fit/test: Algorithm 1 and E_x|dF/dx| per property on fixed test images (poster sections 3-4)."""

    folder = "interventions"

    def __init__(
        self,
        properties: list[str] | dict[str, PropertyFactory] = ("cue",),
        num_images: int = 32,
        num_steps: int = 100,
        num_permutations: int = 1000,
        delta: float = 0.01,
        plus_one: bool = True,
        num_plot: int = 4,
        split: str = "test",
        exclude_classes: list[int] | None = None,
        seed: int = 0,
        batch_size: int = 32,
        run_after_fit: bool = True,
        run_after_test: bool = True,
        model_attr: str | None = None,
    ) -> None:
        super().__init__(num_images, split, batch_size, num_plot, run_after_fit, run_after_test, model_attr)
        names = properties.items() if isinstance(properties, dict) else ((p, get_property(p)) for p in properties)
        self.properties: dict[str, PropertyFactory] = dict(names)
        self.num_steps, self.num_permutations, self.delta, self.plus_one = num_steps, num_permutations, delta, plus_one
        self.exclude_classes = set(exclude_classes or ())
        self.seed = seed

    def tasks(self) -> list[str]:
        return list(self.properties)

    def select(self, dataset: Any) -> list[int]:
        chosen = []
        for i in range(len(dataset)):
            if len(chosen) == self.num_images:
                break
            if int(dataset[i]["label"]) not in self.exclude_classes:
                chosen.append(i)
        return chosen

    def compute(self, model: nn.Module, batch: dict[str, Any], dataset: Any, task: str) -> Rows:
        edit = self.properties[task](batch, dataset)
        g = torch.Generator().manual_seed(self.seed + 7919 * batch["batch_idx"])
        res = gradual_intervention_test(model, batch["image"], edit, self.num_steps, self.num_permutations,
                                        self.delta, g, plus_one=self.plus_one)
        scores = {"gradient": res.gradient, "p_value": res.p_value, "significant": res.significant,
                  "flip_count": res.flip_count, "flipped": res.flipped, "target": res.target}
        strip, _ = intervention_strip(batch["image"], edit, 0)
        strip = strip[None].expand(len(batch["index"]), *strip.shape).to(batch["image"].device)
        return scores, {"curves": res.curve.double(), "strip": strip}

    def summarise(self, task: str, columns: dict[str, Tensor], arrays: dict[str, Tensor]) -> dict[str, Any]:
        out: dict[str, Any] = {k: float(columns[v].mean()) if len(columns[v]) else 0.0 for k, v in _MEANS.items()}
        out.update(index=columns["index"], gradient=columns["gradient"], p_value=columns["p_value"],
                   significant=columns["significant"].bool(), flip_count=columns["flip_count"].long(),
                   target=columns["target"].long(), curves=arrays["curves"].float())
        self._strip = arrays["strip"]
        return out

    def metrics(self, task: str, results: dict[str, Any]) -> dict[str, float]:
        return {f"intervention/{task}/{k}": results[k] for k in _MEANS}

    def figures(self, task: str, stage: str, results: dict[str, Any]) -> list[tuple[str, Figure]]:
        n_plot = min(self.num_log, len(results["curves"]))
        if n_plot == 0:
            return []
        strip = self._strip[0].float()
        fig = plot_prediction_curve(
            torch.linspace(0, 1, self.num_steps), results["curves"][:n_plot], strip,
            torch.linspace(0, 1, strip.shape[0]),
            labels=[f"image {int(i)}" for i in results["index"][:n_plot]],
            title=f"{task} ({stage}); strip: image {int(results['index'][0])}",
        )
        return [(f"{stage}_{task}", fig)]
