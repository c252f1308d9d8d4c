"""A small CNN for the synthetic benchmark (three strided convolutions, global average pooling), registered in timm.

It is the benchmarks' CNN: cheap enough to explain with thousands of black-box queries per image on a CPU, and a
model whose evidence is pixel-level rather than patch-level. Its default configuration normalises [0, 1] images by
subtracting 0.5 (std 1), so a masked pixel at the mean colour is 0 at the first layer.
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv 3x3 stride 2 with `width`, 2 `width` and 2 `width` channels, ReLU, global average pooling, linear head."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


default_cfgs = generate_default_cfgs(
    {"small_cnn": {"input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5), "std": (1.0, 1.0, 1.0), "num_classes": 6}}
)


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """The benchmarks' small CNN (32 / 64 / 64 channels); train it as a classifier stage with `patch_size` set."""
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights; set pretrained: false")
    return build_model_with_cfg(SmallCNN, "small_cnn", pretrained=False, **kwargs)
