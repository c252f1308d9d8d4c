"""The open stage registry (classifier, surrogate, explainer, bridge, ...) and checkpoint loading with weights_only.

A stage is a LightningModule class decorated with `@register_stage("name")`; its checkpoints record that name, and
`load_stage` rebuilds the module from the saved hyperparameters and weights without unpickling code. Each stage
says which models it provides to explanation methods (`provides()`), e.g. an explainer checkpoint provides its
reference classifier, its surrogate and itself.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Callable, TypeVar

import lightning as L
import torch
from timm.optim import param_groups_weight_decay
from torch import nn

_STAGES: dict[str, type[L.LightningModule]] = {}
#: Keys LightningCLI adds to saved hyperparameters; they name the class path of the run that wrote the checkpoint,
#: which the registry replaces (so checkpoints written before a class moved still load).
_CLI_KEYS = ("_class_path", "_instantiator")

S = TypeVar("S", bound=type)


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator: register a LightningModule as stage `name` (its checkpoints record the name)."""

    def wrap(cls: S) -> S:
        if name in _STAGES and _STAGES[name] is not cls:
            raise ValueError(f"stage {name!r} is registered twice ({_STAGES[name].__qualname__} and {cls.__qualname__})")
        cls.stage = name
        _STAGES[name] = cls
        return cls

    return wrap


def stage_class(name: str) -> type[L.LightningModule]:
    """The class registered as stage `name`; unknown names list the known ones."""
    if name not in _STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_STAGES))}")
    return _STAGES[name]


def available_stages() -> list[str]:
    """Names of all registered stages."""
    return sorted(_STAGES)


class StageModule(L.LightningModule):
    """Base of every stage: records the stage name in its checkpoints and lists the models it provides."""

    stage: str = "stage"
    monitor: tuple[str, str] = ("val/loss", "min")
    load_overrides: dict[str, Any] = {}
    """Hyperparameters replaced when a checkpoint is rebuilt (the weights come from the checkpoint, not a download)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage"] = self.stage

    def provides(self) -> dict[str, nn.Module]:
        """Models this checkpoint offers to explanation methods, by stage name ("classifier" answers queries)."""
        return {self.stage: self}

    def adamw(self, params: Any, lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW with the fused kernel where it applies: one update for all tensors (1.4 ms a step on the 4 x 4
        classifier on CPU, 7 ms looped). Not under mixed precision (16-mixed or bf16-mixed): Lightning refuses to clip
        the gradients of an optimizer that could unscale them inside its own step, as a fused one could."""
        fused = self.device.type in ("cpu", "cuda") and not str(self.trainer.precision).endswith("-mixed")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)

    def weight_decay_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """This module's trainable parameters in timm's two AdamW groups: no weight decay on biases, norms and the
        tokens and position embeddings that a submodule's `no_weight_decay()` names (DeiT's and timm's recipe)."""
        skip = [
            f"{prefix}.{name}" if prefix else name
            for prefix, sub in self.named_modules()
            if callable(getattr(sub, "no_weight_decay", None))
            for name in sub.no_weight_decay()
        ]
        return param_groups_weight_decay(self, weight_decay, no_weight_decay_list=skip)

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop with a clear message as soon as the training loss is NaN or infinite."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) of the {self.stage} stage at global step {self.global_step}. "
                "Lower the learning rate (--model.init_args.lr), keep gradient clipping on (--trainer.gradient_clip_val 1.0), "
                "and use 32-true or bf16-mixed precision (16-mixed gives NaN losses on ViTs)."
            )
        return loss


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
    if stage not in _STAGES:
        raise ValueError(f"{path!r} holds no known stage (found {stage!r}; known: {', '.join(sorted(_STAGES))})")
    accepted = (expect,) if isinstance(expect, str) else expect
    if accepted is not None and stage not in accepted:
        raise ValueError(f"{path!r} is a {stage} checkpoint, but a {' or '.join(accepted)} checkpoint is needed here")
    return ckpt


def load_stage(path: str | os.PathLike, expect: str | tuple[str, ...] | None = None,
               map_location: str | torch.device = "cpu") -> StageModule:
    """Rebuild the stage module saved in `path` from its hyperparameters and weights (weights_only=True)."""
    ckpt = load_checkpoint(path, expect)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in _CLI_KEYS}
    cls = _STAGES[ckpt["stage"]]
    module = cls(**{**hparams, **cls.load_overrides})
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return module.to(map_location)
