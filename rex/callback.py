"""Evaluation callback: ReX (Algorithm 3) on fixed test images of the trained classifier, with the section 6 metrics.

Logged on rank 0 as `rex/<metric>` and `rex/<metric>_std` (size, insertion, deletion, and IN / OUT when the data has
`mask` / `occluder_mask`), `rex/model_calls` and `rex/seconds` per image, with overlays of `num_log` images (image,
responsibility map, explanation). An image whose fully masked version already passes the sufficiency test is flagged
`degenerate` (`explainers.metrics.degenerate`, as in explain.py): its title says so and its size, IN and OUT are left
out of the means. On W&B, one table per run (`rex/<stage>_images`) holds every image, its map, its explanation and
its metrics, a row each; sharding, gathering and logging are `explainers.callbacks.EvaluationCallback`'s.
Results also stay in `callback.results` (`summary`, `per_image`, `maps`, `explanations`).
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from explainers.callbacks import EvaluationCallback, Rows
from explainers.figures import DEGENERATE_NOTE, explanation_to_array, image_to_array, map_to_array, overlay_figure
from explainers.metrics import degenerate_images, fraction_inside, fraction_outside
from models.queries import QueryEngine
from rex.explainer import ReX, ReXConfig, rex_explain
from rex.metrics import insertion_deletion


class ReXCallback(EvaluationCallback):
    """After fit/test: Algorithm 3 on fixed test images, section 6 metrics (Tables 1-3), overlays; DDP-sharded."""

    folder = "rex"
    npz_name = "{stage}_maps"
    unsaved = ("images",)

    def __init__(self, num_images: int = 16, split: str = "test", rex: dict[str, Any] | ReXConfig | None = None,
                 batch_size: int = 8, steps: int = 50, num_log: int = 4, run_after_fit: bool = True,
                 run_after_test: bool = True, model_attr: str | None = "model") -> None:
        super().__init__(num_images, split, batch_size, num_log, run_after_fit, run_after_test, model_attr)
        if isinstance(rex, ReXConfig):
            rex = {f.name: getattr(rex, f.name) for f in fields(rex)}
        self.options = dict(rex or {})
        ReX(**self.options)
        self.steps = steps

    def compute(self, model: nn.Module, batch: dict[str, Any], dataset: Any, task: str) -> Rows:
        images = batch["image"]
        e = rex_explain(model, images, **self.options)
        _, _, ins, dele = insertion_deletion(model, images, e.maps, e.target, self.steps)
        nan = torch.full_like(ins, math.nan)
        b = images.shape[0]
        engine = QueryEngine(model, mask_value=self.options.get("mask_value"))
        flat, full, _ = degenerate_images(engine, images, e.target, self.options.get("min_confidence", 0.0))
        confidence = full.gather(1, e.target[:, None].to(full.device))[:, 0]
        scores = {
            "size": e.explanation.flatten(1).float().mean(1), "insertion": ins, "deletion": dele,
            "in": fraction_inside(e.explanation, batch["mask"]) if "mask" in batch else nan,
            "out": fraction_outside(e.explanation, batch["occluder_mask"]) if "occluder_mask" in batch else nan,
        }
        scores = {k: torch.where(flat, nan, v) if k in ("size", "in", "out") else v for k, v in scores.items()}
        scores |= {
            "degenerate": flat.float(), "target": e.target, "confidence": confidence,
            "model_calls": torch.full_like(ins, e.model_calls / b), "seconds": torch.full_like(ins, e.seconds / b),
        }
        return scores, {"maps": e.maps.float(), "explanations": e.explanation[:, 0], "images": images}

    def summarise(self, task: str, columns: dict[str, Tensor], arrays: dict[str, Tensor]) -> dict[str, Any]:
        results = super().summarise(task, columns, arrays)
        bookkeeping = ("target", "confidence", "model_calls", "seconds", "degenerate")
        results["summary"] = {k: v for k, v in results["summary"].items()
                              if not k.endswith(("_n", "_nan")) and k not in ("target", "confidence")
                              and not any(k in (f"{b}_std", f"{b}_se") for b in bookkeeping)}
        return results

    def figures(self, task: str, stage: str, results: dict[str, Any]) -> list[tuple[str, Figure]]:
        cols = results["per_image"]
        out = []
        for i in range(min(self.num_log, len(cols["index"]))):
            title = f"image {int(cols['index'][i])}: class {int(cols['target'][i])} (p = {float(cols['confidence'][i]):.2f})"
            if cols["degenerate"][i]:
                title += "\n" + DEGENERATE_NOTE
            fig = overlay_figure(results["images"][i], results["maps"][i], title, results["explanations"][i],
                                 map_title="responsibility")
            out.append((f"{stage}_{int(cols['index'][i])}", fig))
        return out

    def row_images(self, task: str, results: dict[str, Any]) -> dict[str, list[np.ndarray]]:
        """Every explained image, its responsibility map and its explanation, one row each in the W&B table."""
        images, maps, kept = results["images"], results["maps"], results["explanations"]
        return {"image": [image_to_array(x) for x in images],
                "responsibility": [map_to_array(x, m) for x, m in zip(images, maps)],
                "explanation": [explanation_to_array(x, k) for x, k in zip(images, kept)]}
