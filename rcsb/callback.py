"""Evaluation callback: RCSB counterfactuals on fixed test images after a classifier or bridge fit.

Attached to a classifier stage it loads the bridge from `bridge_ckpt`; attached to a bridge stage it loads the
classifier from `classifier_ckpt`. The target of image i is `(label + shift) % num_classes` (another class), the
region `region` ("truth" for the synthetic object mask, or "auto:METHOD"). Logged as `rcsb/flipped`,
`rcsb/target_probability`, `rcsb/l1_inside`, `rcsb/change_outside` and, with an independent judge `oracle_ckpt`
(a classifier checkpoint), `rcsb/oracle_flipped` (the oracle's argmax on the counterfactual is the target), with
the four-panel figures of `num_log` images; sharding, gathering and logging are
`explainers.callbacks.EvaluationCallback`'s.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from explainers.callbacks import EvaluationCallback, Rows
from explainers.figures import counterfactual_figure
from models.stages import load_stage
from rcsb.method import rcsb_explain


def oracle_flipped(oracle: nn.Module, counterfactuals: Tensor, target: Tensor) -> Tensor:
    """Per image, whether the oracle's argmax on the counterfactual is the target class (the oracle flip)."""
    with torch.no_grad():
        return oracle(counterfactuals).argmax(1) == torch.as_tensor(target, device=counterfactuals.device).long()


class RCSBCallback(EvaluationCallback):
    """After fit/test: RCSB (guided I2SB inpainting in a region) towards another class on fixed test images."""

    folder = "rcsb"
    npz_name = "{stage}_counterfactuals"

    def __init__(self, bridge_ckpt: str | None = None, classifier_ckpt: str | None = None, num_images: int = 8,
                 split: str = "test", region: str = "truth", shift: int = 1, options: dict[str, Any] | None = None,
                 batch_size: int = 8, num_log: int = 4, run_after_fit: bool = True, run_after_test: bool = False,
                 oracle_ckpt: str | None = None) -> None:
        super().__init__(num_images, split, batch_size, num_log, run_after_fit, run_after_test, model_attr=None)
        if (bridge_ckpt is None) == (classifier_ckpt is None):
            raise ValueError("RCSBCallback needs exactly one of bridge_ckpt (on a classifier stage) or classifier_ckpt "
                             "(on a bridge stage)")
        self.bridge_ckpt, self.classifier_ckpt = bridge_ckpt, classifier_ckpt
        self.region, self.shift, self.options = region, shift, dict(options or {})
        self.oracle_ckpt = oracle_ckpt
        self._other: nn.Module | None = None
        self._oracle: nn.Module | None = None

    def model(self, pl_module: L.LightningModule) -> nn.Module:
        """The module being trained; the other model is loaded from its checkpoint once."""
        if self._other is None:
            path, stage = (self.bridge_ckpt, "bridge") if self.bridge_ckpt else (self.classifier_ckpt, "classifier")
            with torch.inference_mode(False):  # weights usable by autograd, even when loaded in a test loop
                other = load_stage(path, expect=stage).eval().requires_grad_(False)
            self._other = other if stage == "bridge" else other.model
        if self.oracle_ckpt and self._oracle is None:
            self._oracle = load_stage(self.oracle_ckpt, expect="classifier").model.eval().requires_grad_(False)
        with torch.inference_mode(False):
            self._other.to(pl_module.device)
            if self._oracle is not None:
                self._oracle.to(pl_module.device)
        return pl_module

    def compute(self, model: nn.Module, batch: dict[str, Any], dataset: Any, task: str) -> Rows:
        classifier, bridge = (model.model, self._other) if self.bridge_ckpt else (self._other, model)
        # the guidance backpropagates through the bridge: leave the test loop's inference mode for this batch
        with torch.inference_mode(False), torch.enable_grad():
            batch = {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
            images = batch["image"]
            n_classes = classifier(images[:1]).shape[1]
            target = (batch["label"] + self.shift) % n_classes
            e = rcsb_explain({"classifier": classifier, "bridge": bridge}, images, target, batch=batch,
                             region=self.region, **self.options)
        scores = {k: v.float() for k, v in e.scores.items()}
        if self._oracle is not None:
            scores["oracle_flipped"] = oracle_flipped(self._oracle, e.counterfactual, target).float()
        return ({**scores, "target": target},
                {"images": images, "counterfactuals": e.counterfactual, "regions": e.region})

    def summarise(self, task: str, columns: dict[str, Tensor], arrays: dict[str, Tensor]) -> dict[str, Any]:
        results = super().summarise(task, columns, arrays)
        results["summary"] = {k: v for k, v in results["summary"].items() if not k.startswith("target_std")}
        return results

    def figures(self, task: str, stage: str, results: dict[str, Any]) -> list[tuple[str, Figure]]:
        cols = results["per_image"]
        out = []
        for i in range(min(self.num_log, len(cols["index"]))):
            title = (f"image {int(cols['index'][i])} -> class {int(cols['target'][i])}: "
                     f"p = {float(cols['target_probability'][i]):.2f}")
            fig = counterfactual_figure(results["images"][i], results["counterfactuals"][i], results["regions"][i],
                                        title)
            out.append((f"{stage}_{int(cols['index'][i])}", fig))
        return out
