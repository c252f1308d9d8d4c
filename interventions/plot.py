"""Thumbnails of an intervention I_x for the strip under the prediction curve (poster section 2-3 figures)."""
from __future__ import annotations

import torch
from torch import Tensor

from interventions.intervene import Intervention


@torch.no_grad()
def intervention_strip(
    images: Tensor, intervention: Intervention, index: int = 0, num_frames: int = 5
) -> tuple[Tensor, Tensor]:
    """Thumbnails I_x (T, 3, H, W) of image `index` at T equidistant x (T,), for the strip under the curve."""
    xs = torch.linspace(0, 1, num_frames)
    frames = torch.stack([intervention(images, float(v))[index] for v in xs])
    return frames.clamp(0, 1).cpu(), xs
