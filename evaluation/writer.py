"""Files of an explain run, written by a Lightning BasePredictionWriter: per (image, method) a PNG, an npz and the
report's pictures, and at the end, gathered from every device, summary.json, report.html and (for several methods on
a data split) comparison.md."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from evaluation.table import comparison_table
from explainers.figures import (DEGENERATE_NOTE, explanation_figure, image_to_array, map_to_array, outline_array,
                                save_figure)
from explainers.maps import to_pixel_map


#: Folder (inside the output folder) of the report's pictures: each input image and each map cell.
REPORT_PICTURES = "report_files"


class ExplanationWriter(BasePredictionWriter):
    """Writes `<image>_<method>.png` / `.npz` (and the report's pictures under `report_files/`) per batch, and
    summary.json, report.html (+ comparison.md) once all devices are done."""

    def __init__(self, out_dir: str | Path, class_names: list[str] | None = None, meta: dict[str, Any] | None = None,
                 compare: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.class_names, self.meta, self.compare = Path(out_dir), class_names, meta or {}, compare
        self.records: list[dict[str, Any]] = []

    def _name(self, c: int) -> str:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else f"class {c}"

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> None:
        images, probs, pred, target = batch["image"], prediction["probs"], prediction["pred"], prediction["target"]
        b = images.shape[0]
        pictures = self.out_dir / REPORT_PICTURES
        pictures.mkdir(exist_ok=True)
        for i in range(b):
            Image.fromarray(image_to_array(images[i])).save(pictures / f"{batch['name'][i]}.png")
        for method, e, metrics, extracted, curves in prediction["results"]:
            pixel = None if e.maps is None else to_pixel_map(e.maps, tuple(images.shape[-2:]))
            for i in range(b):
                p, t = int(pred[i]), int(target[i])
                rec = {"image": batch["name"][i], "predicted": p, "predicted_name": self._name(p),
                       "confidence": float(probs[i, p]), "target": t, "target_name": self._name(t),
                       "target_confidence": float(probs[i, t])}
                if "label" in batch:
                    rec["label"] = int(batch["label"][i])
                    rec["label_name"] = self._name(rec["label"])
                stem = f"{rec['image']}_{method}"
                title = (f"{method}: predicted {rec['predicted_name']} (p = {rec['confidence']:.2f})"
                         + ("" if t == p else f", target {self._name(t)}"))
                flags = {k: bool(v[i]) for k, v in {**e.scores, **metrics}.items() if v.dtype == torch.bool}
                if e.curve is not None or e.counterfactual is not None:
                    title = f"{method}: " + ", ".join(f"{k} = {float(v[i]):.3g}" for k, v in metrics.items()) + \
                            f" ({rec['predicted_name']})"
                if flags.get("degenerate"):
                    title += "\n" + DEGENERATE_NOTE
                shown = e if extracted is None else replace(e, explanation=extracted)
                save_figure(explanation_figure(images[i], shown, i, title, method), self.out_dir / f"{stem}.png")
                files = {"overlay": f"{stem}.png", "npz": f"{stem}.npz",
                         "image": f"{REPORT_PICTURES}/{rec['image']}.png"}
                if pixel is not None:
                    cell = map_to_array(images[i], pixel[i])
                    if extracted is not None:
                        cell = outline_array(cell, extracted[i])
                    files["cell"] = f"{REPORT_PICTURES}/{stem}.png"
                    Image.fromarray(cell).save(self.out_dir / files["cell"])
                arrays = {"map": pixel, "raw_map": e.maps, "explanation": None if extracted is None else extracted[:, 0],
                          "curve": e.curve, "counterfactual": e.counterfactual, "region": e.region,
                          "insertion_curve": None if curves is None else curves[0],
                          "deletion_curve": None if curves is None else curves[1]}
                saved = {k: v[i].cpu().numpy() for k, v in arrays.items() if v is not None}
                if e.x is not None:
                    saved["x"] = e.x.cpu().numpy()
                np.savez_compressed(self.out_dir / f"{stem}.npz", **saved)
                self.records.append({**rec, "method": method, **flags, "seconds": e.seconds / b,
                                     "model_calls": e.model_calls / b, "model_images": e.model_images / b,
                                     "metrics": {k: float(v[i]) for k, v in metrics.items() if v.dtype != torch.bool},
                                     "files": files})

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from evaluation.report import write_report  # imported here so `python -m evaluation.report` runs it fresh

        records = self.records
        if dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, records)
            records = [r for part in parts for r in part]
        self.records = sorted(records, key=lambda r: (r["image"], r["method"]))
        if not trainer.is_global_zero:
            return
        summary = {**self.meta, "records": self.records}
        (self.out_dir / "summary.json").write_text(json.dumps(finite(summary), indent=1, allow_nan=False))
        if self.compare:
            (self.out_dir / "comparison.md").write_text(comparison_table(self.records))
        write_report(self.out_dir, self.records, self.meta)


def finite(value: Any) -> Any:
    """JSON-ready copy of `value` with NaN and infinite floats as null."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
