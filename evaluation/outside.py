"""Models this project did not train: a timm model by name, a Python factory (both white-box), and TorchScript or
torch.export files (black boxes). Each becomes the "classifier" of a LoadedModels, on images in [0, 1]."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from evaluation.loaded import LoadedModels
from models.maskable import MaskableClassifier, create_backbone
from models.queries import BlackBoxModel
from models.weights import WeightsUnavailable

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_outside_spec(spec: str) -> bool:
    """A `timm:NAME` or `package.module:factory` model spec (not a file path)."""
    return spec.startswith("timm:") or (FACTORY.match(spec) is not None and not Path(spec).exists())


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: class names file not found: {str(path)!r} (one class name per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _imagenet_names(net: nn.Module) -> list[str] | None:
    try:
        subset = timm.data.infer_imagenet_subset(net)
        return list(timm.data.ImageNetInfo(subset).label_descriptions()) if subset else None
    except Exception:  # names are a convenience: a model whose labels timm cannot infer keeps class indices
        return None


def _wrap(net: nn.Module, size: int, grid: int) -> MaskableClassifier:
    try:
        return MaskableClassifier(net, img_size=size, patch_size=max(1, size // grid))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def timm_model(name: str, img_size: int | None, grid: int, weights: str = "pretrained") -> LoadedModels:
    """timm model `name` with its pretrained weights (`weights`: "pretrained", "random" or a local file) and its
    evaluation data config (input size, mean / std inside the model, resize-and-crop ratio)."""
    cfg = timm.models.get_pretrained_cfg(name)
    num_classes = getattr(cfg, "num_classes", None) or 1000
    try:
        net = create_backbone(name, num_classes, pretrained=weights == "pretrained",
                              pretrained_file=None if weights in ("pretrained", "random") else weights)
    except WeightsUnavailable as err:
        raise SystemExit(f"error: {err.ways_out('--weights PATH', '--weights random')}") from None
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"error: timm:{name}: {err}") from None
    data = timm.data.resolve_data_config(model=net)
    size = img_size or int(data["input_size"][-1])
    model = _wrap(net.eval(), size, grid)
    names = _imagenet_names(net) if weights != "random" else None
    print(f"note: timm:{name} ({'random weights' if weights == 'random' else weights}): {size} px input, "
          f"mean {tuple(round(v, 3) for v in data['mean'])}, std {tuple(round(v, 3) for v in data['std'])} inside the "
          f"model, crop ratio {data.get('crop_pct', 1.0)}, patch grid {model.patch_grid}")
    return LoadedModels({"classifier": model}, "timm", size, crop_pct=float(data.get("crop_pct") or 1.0),
                        class_names=names)


def factory_model(spec: str, img_size: int | None, grid: int) -> LoadedModels:
    """`package.module:factory`: a callable (no arguments) returning an nn.Module that maps images in [0, 1] to
    logits; optional attributes `img_size`, `mean` (the masking colour) and `class_names` are used."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"error: cannot load model factory {spec!r}: {err}") from None
    if not callable(factory):
        raise SystemExit(f"error: {spec!r} is not callable; give a function or class that returns an nn.Module")
    model = factory()
    if not isinstance(model, nn.Module):
        raise SystemExit(f"error: the factory {spec!r} returned a {type(model).__name__}, not a torch nn.Module "
                         "(it must map images (B, 3, H, W) in [0, 1] to logits (B, classes))")
    size = img_size or getattr(model, "img_size", None) or 224
    if getattr(model, "patch_grid", None) is None:
        model.patch_grid = (grid, grid)
    names = getattr(model, "class_names", None)
    print(f"note: {spec}: a white-box model on {size} px images (--img-size), perturbed on a {model.patch_grid[0]}x"
          f"{model.patch_grid[1]} grid (--grid)")
    return LoadedModels({"classifier": model.eval()}, "factory", int(size), class_names=list(names) if names else None)


def program_model(path: Path, img_size: int | None, grid: int) -> LoadedModels:
    """A TorchScript (torch.jit.save) or torch.export (.pt2) file: a black box on images in [0, 1] -> logits."""
    size = img_size or 224
    if path.suffix == ".pt2":
        fn: Any = torch.export.load(str(path)).module()
        kind = "torch.export program"
        try:
            with torch.no_grad():
                fn(torch.rand(2, 3, size, size))
        except Exception:  # exported for one batch size: run images one at a time
            program = fn
            fn = lambda images: torch.cat([program(x[None]) for x in images])  # noqa: E731
            kind += " (exported for batch size 1, so images run one at a time; export with a dynamic batch " \
                    "dimension for speed)"
    else:
        fn = torch.jit.load(str(path), map_location="cpu").eval()
        kind = "TorchScript model"
    mean = getattr(fn, "mean", None)
    fill = "black" if mean is None else f"its mean colour {[round(float(v), 3) for v in mean.flatten()]}"
    print(f"note: {path} is a {kind}: treated as a black box on {size} px images (--img-size), "
          f"perturbed on a {grid}x{grid} grid (--grid), masked pixels set to {fill}")
    return LoadedModels({"classifier": BlackBoxModel(fn, size, (grid, grid), mean)}, None, size)
