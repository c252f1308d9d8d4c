"""The classifier as a black box (section 4): masked images in, class probabilities out, calls counted."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def apply_mask(images: Tensor, index: Tensor, visible: Tensor, mask_value: float = 0.0) -> Tensor:
    """Section 4: mutant images, pixels of images[index] outside `visible` (M, H, W) set to `mask_value`."""
    return torch.where(visible[:, None], images[index], torch.as_tensor(mask_value, dtype=images.dtype))


@dataclass
class BlackBox:
    """Section 4: `model(images) -> logits` queried in chunks of `max_batch`, counting calls and images."""

    model: nn.Module
    max_batch: int = 256
    mask_value: float = 0.0
    calls: int = field(default=0, init=False)
    images: int = field(default=0, init=False)

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax class probabilities (M, C) of a batch of images, sent in chunks of `max_batch`."""
        out = []
        for chunk in images.split(self.max_batch):
            out.append(torch.softmax(self.model(chunk).float(), dim=1))
            self.calls += 1
            self.images += chunk.shape[0]
        return torch.cat(out)

    @torch.no_grad()
    def masked_probabilities(self, images: Tensor, index: Tensor, visible: Tensor) -> Tensor:
        """Probabilities (M, C) of mutants images[index] with only `visible` (M, H, W) pixels kept."""
        out = []
        for idx, vis in zip(index.split(self.max_batch), visible.split(self.max_batch)):
            out.append(self.probabilities(apply_mask(images, idx, vis.to(images.device), self.mask_value)))
        if not out:
            return torch.zeros(0, 0, device=images.device)
        return torch.cat(out)
