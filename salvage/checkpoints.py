"""Checkpoint loading with weights_only=True, and the stage (classifier, surrogate, explainer) a checkpoint holds."""
from __future__ import annotations

import os
import pickle
from typing import Any

import lightning as L
import torch


def _stage_classes() -> dict[str, type[L.LightningModule]]:
    from salvage.classifier import ClassifierModule
    from salvage.explainer import ExplainerModule
    from salvage.surrogate import SurrogateModule

    return {"classifier": ClassifierModule, "surrogate": SurrogateModule, "explainer": ExplainerModule}


def load_checkpoint(path: str | os.PathLike, expect: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The checkpoint dict at `path`, loaded without unpickling code; `expect` names the stage(s) accepted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"refusing to load {path!r}: it is not a plain Lightning checkpoint (weights_only loading failed: "
            f"{str(err).splitlines()[0]}). Checkpoints must hold tensors and plain values only, never pickled code."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path!r} is not a Lightning checkpoint of this project (no state_dict/hyper_parameters)")
    stage = ckpt.get("stage")
    if stage not in _stage_classes():
        raise ValueError(f"{path!r} holds no known stage (found {stage!r}; known: {', '.join(_stage_classes())})")
    accepted = (expect,) if isinstance(expect, str) else expect
    if accepted is not None and stage not in accepted:
        raise ValueError(f"{path!r} is a {stage} checkpoint, but a {' or '.join(accepted)} checkpoint is needed here")
    return ckpt


def stage_module(path: str | os.PathLike, expect: str | tuple[str, ...] | None = None) -> L.LightningModule:
    """Rebuild the LightningModule saved in `path` from its hyperparameters and weights (weights_only=True)."""
    stage = load_checkpoint(path, expect)["stage"]
    return _stage_classes()[stage].load_from_checkpoint(path, map_location="cpu", weights_only=True)
