"""W&B for explain runs: offline unless configured, and one `wandb.Table` per run with the image, the map, the
explanation and the scores of every (image, method), so a dashboard can sort and filter them."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evaluation.table import COST_KEYS, method_summaries
from explainers.figures import DEGENERATE_NOTE, explanation_to_array

#: Table columns of every record, before its metrics.
RECORD_COLUMNS = ("image_name", "method", "predicted_name", "confidence", "target_name", "target_confidence",
                  "degenerate")


def wandb_offline() -> bool:
    """W&B stays offline unless the user set WANDB_MODE, an API key, or logged in (~/.netrc)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def _pictures(out_dir: Path, record: dict[str, Any]) -> tuple[np.ndarray | None, ...]:
    """(image, map, explanation) RGB arrays of a record from the run's files; a method without a map shows its
    figure (intervention curve, counterfactual panels) as the map and no explanation."""
    files = record["files"]
    image = np.array(Image.open(out_dir / files["image"]).convert("RGB"))
    if "cell" not in files:
        return image, np.asarray(Image.open(out_dir / files["overlay"]).convert("RGB")), None
    cell = np.asarray(Image.open(out_dir / files["cell"]).convert("RGB"))
    with np.load(out_dir / files["npz"]) as arrays:
        if "explanation" not in arrays:
            return image, cell, None
        explanation = explanation_to_array(torch.from_numpy(image).permute(2, 0, 1).float() / 255,
                                           torch.from_numpy(arrays["explanation"]))
    return image, cell, explanation


def log_explanations(out_dir: str | Path, records: list[dict[str, Any]], meta: dict[str, Any],
                     project: str = "explaining-classifiers", name: str | None = None) -> str:
    """Log one W&B run for an explain run: the `explanations` table (a row per image and method: image, map with the
    outlined explanation, explanation, prediction, degenerate flag, every metric, seconds and model calls) and,
    per method, each metric's mean in the run summary. Offline unless configured; returns the run's folder."""
    import wandb

    out_dir = Path(out_dir)
    keys, summaries = method_summaries(records)
    run = wandb.init(project=project, name=name or out_dir.name, job_type="explain", dir=str(out_dir),
                     mode="offline" if wandb_offline() else None, config=meta, reinit="create_new")
    columns = ["image", "map", "explanation", *RECORD_COLUMNS, *keys, *COST_KEYS]
    table = wandb.Table(columns=columns)
    for r in records:
        flag = bool(r.get("degenerate"))
        captions = (r["image"], f"{r['method']}" + (f": {DEGENERATE_NOTE}" if flag else ""), r["method"])
        pictures = [None if p is None else wandb.Image(p, caption=c) for p, c in zip(_pictures(out_dir, r), captions)]
        row = {**r, "image_name": r["image"], "degenerate": flag}
        values = [row.get(c) for c in RECORD_COLUMNS] + [r["metrics"].get(k) for k in keys] + [r[k] for k in COST_KEYS]
        table.add_data(*pictures, *(None if isinstance(v, float) and math.isnan(v) else v for v in values))
    run.log({"explanations": table})
    for method, stats in summaries.items():
        for key in [*keys, *COST_KEYS]:
            if key in stats:
                run.summary[f"{method}/{key}"] = stats[key]
                run.summary[f"{method}/{key}_se"] = stats[f"{key}_se"]
        run.summary[f"{method}/degenerate"] = stats["degenerate"]
    folder = str(Path(run.dir).parent)
    run.finish()
    return folder
