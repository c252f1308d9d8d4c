"""One explain run: methods on images through Trainer.predict, files by the prediction writer, records returned."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import yaml
from torch.utils.data import DataLoader, Dataset

from evaluation.configs import build_datamodule
from evaluation.loading import LoadedModels, NamedSplit
from evaluation.task import ExplainTask
from evaluation.writer import ExplanationWriter


def split_items(config: str, split: str, overrides: list[str], limit: int | None,
                loaded: LoadedModels) -> tuple[Dataset, Any, list[str] | None]:
    """The first `limit` images of a config's data split (`KEY=VALUE` init_arg overrides), their dataset and the
    class names; refuses images of another size than a checkpoint's model expects."""
    init = {k.removeprefix("init_args."): yaml.safe_load(v) for k, _, v in (d.partition("=") for d in overrides)}
    dm = build_datamodule(config, init)
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    dataset = getattr(dm, f"data_{split}", None)
    if dataset is None:
        raise SystemExit(f"error: {type(dm).__name__} has no {split} split (data_{split})")
    items = NamedSplit(dataset, split, limit)
    size = tuple(items[0]["image"].shape[-2:]) if len(items) else None
    if size and loaded.stage is not None and size != (loaded.img_size, loaded.img_size):
        raise SystemExit(f"error: the data has {size[0]}x{size[1]} images but the model expects "
                         f"{loaded.img_size} px; set --data-arg img_size={loaded.img_size}")
    return items, dataset, getattr(dm, "class_names", None)


def explain_images(
    loaded: LoadedModels, methods: list[str], items: Dataset, out_dir: str | Path,
    options: dict[str, dict[str, Any]] | None = None, target: int | None = None, dataset: Any = None,
    class_names: list[str] | None = None, meta: dict[str, Any] | None = None, compare: bool = False,
    batch_size: int = 8, devices: int = 1, accelerator: str = "auto", steps: int = 50, seed: int = 0,
    metrics: bool = True, srg_masks: int = 128, min_confidence: float | str = "auto",
) -> list[dict[str, Any]]:
    """Run `methods` on `items` ({image, name, ...} dicts) and write PNGs, npz files, summary.json, report.html (and
    comparison.md with `compare`) into `out_dir`; returns the records (one per image and method)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ExplanationWriter(out_dir, class_names, meta, compare)
    task = ExplainTask(loaded, methods, options or {}, target, dataset, steps, seed, metrics, srg_masks, min_confidence)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, logger=False, inference_mode=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[writer])
    try:
        trainer.predict(task, DataLoader(items, batch_size=batch_size, shuffle=False), return_predictions=False)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    if trainer.is_global_zero:
        print(f"wrote {len(writer.records)} records for {len(items)} images to {out_dir}/ (summary.json"
              + (", comparison.md)" if compare else ")") + f"\nreport: {(out_dir / 'report.html').resolve()}")
    return writer.records
