"""Black-box queries of a classifier (ReX section 4): masked images in, class probabilities out, in chunks.

`QueryEngine` is what ReX's search and extraction, and the insertion/deletion metrics, call; `CallCounter` counts
every forward call of a module (white-box methods included) for the per-method cost columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from models.masking import MaskValue, apply_mask, mask_fill


@dataclass
class QueryEngine:
    """`model(images) -> logits` queried in chunks of `max_batch`; removed pixels take `mask_value` (default: the
    model's mask value, see `models.masking.mask_fill`)."""

    model: nn.Module
    max_batch: int = 256
    mask_value: MaskValue = None

    def __post_init__(self) -> None:
        self.fill = mask_fill(self.model, self.mask_value)

    def blank(self, images: Tensor) -> Tensor:
        """Fully masked copies of `images`."""
        return self.fill.to(images).expand_as(images).clone()

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax class probabilities (M, C) of a batch of images, sent in chunks of `max_batch`."""
        return torch.cat([torch.softmax(self.model(chunk).float(), dim=1) for chunk in images.split(self.max_batch)])

    @torch.no_grad()
    def masked_probabilities(self, images: Tensor, index: Tensor, visible: Tensor) -> Tensor:
        """Probabilities (M, C) of mutants images[index] with only `visible` (M, H, W) pixels kept."""
        out = [self.probabilities(apply_mask(images, vis, self.fill, idx))
               for idx, vis in zip(index.split(self.max_batch), visible.split(self.max_batch))]
        if not out:
            return torch.zeros(0, 0, device=images.device)
        return torch.cat(out)


class CallCounter:
    """Counts forward calls and images of a module through a forward pre-hook; a context manager."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls = self.images = 0
        self._hook = None

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0

    def __enter__(self) -> CallCounter:
        self._hook = self.module.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


class BlackBoxModel(nn.Module):
    """A model known only as a function images (B, 3, H, W) in [0, 1] -> logits (a TorchScript or torch.export file):
    it grants black-box access only (`access = "black"`); `mean`, when known, is the colour removed pixels take."""

    access = "black"

    def __init__(self, fn: Callable[[Tensor], Tensor], img_size: int, patch_grid: tuple[int, int] = (8, 8),
                 mean: Tensor | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.img_size = img_size
        self.patch_grid = tuple(patch_grid)
        if mean is not None:
            self.register_buffer("mean", torch.as_tensor(mean).float().view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> BlackBoxModel:
        """A black box stays as it was saved (a torch.export program cannot switch modes at all)."""
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.fn(images)
