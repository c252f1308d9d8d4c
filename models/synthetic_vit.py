"""Tiny ViTs for the synthetic benchmark, registered in timm so configs name them like any other backbone."""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from timm.layers import PatchEmbed
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


class ConvPatchEmbed(PatchEmbed):
    """Patch embedding by a small CNN applied to each patch on its own (early convolutions, Xiao et al. 2021).

    Every token sees only its own patch's pixels, so removing a patch stays exact, while the shared convolutions
    give the translation equivariance within a patch that lets a ViT train from scratch on little data.
    """

    def __init__(self, *args: Any, stem_width: int = 32, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.patch_size[0]
        if p % 4:
            raise ValueError(f"ConvPatchEmbed needs a patch size divisible by 4, got {p}")
        in_chans, dim = self.proj.in_channels, self.proj.out_channels
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(stem_width, 2 * stem_width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(2 * stem_width * (p // 4) ** 2, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        b, p = x.shape[0], self.patch_size[0]
        patches = rearrange(x, "b c (h p1) (w p2) -> (b h w) c p1 p2", p1=p, p2=p)
        patches = patches.contiguous(memory_format=torch.channels_last)  # about 1.6x faster convolutions on CPU
        return self.norm(self.proj(patches).view(b, self.num_patches, -1))


default_cfgs = generate_default_cfgs(
    {
        "vit_tiny_convpatch16": {"input_size": (3, 64, 64), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD},
        "vit_tiny_convpatch8": {"input_size": (3, 112, 112), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD},
    }
)


def _tiny_vit(name: str, pretrained: bool, img_size: int, patch_size: int, **kwargs: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; set pretrained: false")
    args = dict(img_size=img_size, patch_size=patch_size, embed_dim=96, depth=4, num_heads=3, reg_tokens=4,
                no_embed_class=True)
    return build_model_with_cfg(
        VisionTransformer, name, pretrained=False, embed_layer=ConvPatchEmbed, **{**args, **kwargs}
    )


@register_model
def vit_tiny_convpatch16(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """A 4-block ViT with per-patch convolutional embedding, 16 px patches and 4 registers (4 x 4 grid at 64 px)."""
    return _tiny_vit("vit_tiny_convpatch16", pretrained, **{"img_size": 64, "patch_size": 16, **kwargs})


@register_model
def vit_tiny_convpatch8(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The same ViT with 8 px patches: a 14 x 14 grid at 112 px, the fine-grid benchmark's classifier."""
    return _tiny_vit("vit_tiny_convpatch8", pretrained, **{"img_size": 112, "patch_size": 8, **kwargs})
