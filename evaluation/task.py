"""The explain run under Trainer.predict: every requested method on each batch, scored by the metric suite."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.loading import LoadedModels
from evaluation.suite import score
from explainers.metrics import resolve_min_confidence
from explainers.protocol import Explanation, get


class ExplainTask(L.LightningModule):
    """predict_step runs each method (`explainers.get(name)`) on a batch and scores it; returns, per method, the
    Explanation, its per-image metrics, the sufficient explanation they used and the insertion and deletion curves,
    plus the per-image predictions. One progress bar counts (image, method) pairs."""

    def __init__(self, loaded: LoadedModels, methods: list[str], options: dict[str, dict[str, Any]],
                 target: int | None = None, dataset: Any = None, steps: int = 50, seed: int = 0,
                 metrics: bool = True, srg_masks: int = 128, min_confidence: float | str = "auto") -> None:
        super().__init__()
        modules = [*loaded.models.values(), *loaded.modules]
        # a module may fill several roles (the explainer's reference classifier is the classifier): hold each once
        self.held = torch.nn.ModuleList({id(m): m for m in modules}.values())
        object.__setattr__(self, "loaded", loaded)
        self.methods, self.options, self.fixed_target, self.dataset = methods, options, target, dataset
        self.steps, self.seed, self.with_metrics, self.srg_masks = steps, seed, metrics, srg_masks
        self.min_confidence = min_confidence

    def on_predict_start(self) -> None:
        self.held.eval()
        shards = max(self.trainer.world_size, 1)
        images = -(-len(self.trainer.predict_dataloaders.dataset) // shards)
        self.progress = tqdm(total=images * len(self.methods), desc="explaining", unit=" image-method",
                             disable=not self.trainer.is_global_zero, dynamic_ncols=True)

    def on_predict_end(self) -> None:
        self.progress.close()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        images = batch["image"]
        models = self.loaded.models
        with torch.no_grad():
            probs = models["classifier"](images).float().softmax(-1)
        pred = probs.argmax(1)
        target = pred if self.fixed_target is None else torch.full_like(pred, self.fixed_target)
        min_confidence = resolve_min_confidence(self.min_confidence, probs.shape[1])
        results: list[tuple[str, Explanation, dict[str, Tensor], Tensor | None, Tensor | None]] = []
        for method in self.methods:
            spec, options = get(method), dict(self.options.get(method, {}))
            if "min_confidence" in spec.options:  # methods that extract their own explanation use the same rule
                options.setdefault("min_confidence", min_confidence)
            e = spec(models, images, target, batch=batch, dataset=self.dataset, **options).detach()
            metrics: dict[str, Tensor] = {k: v for k, v in e.scores.items() if v.dtype != torch.bool}
            extracted, curves = e.explanation, None
            if self.with_metrics:
                g = torch.Generator(device=images.device).manual_seed(self.seed * 1_000_003 + batch_idx)
                metrics, extracted, curves = score(e, models, images, batch, self.steps, self.srg_masks, g,
                                                   min_confidence)
            results.append((method, e, metrics, extracted, curves))
            self.progress.set_postfix_str(method, refresh=False)
            self.progress.update(len(images))
        return {"probs": probs, "pred": pred, "target": target, "results": results}
