"""Segmenter-style explainer (Strudel et al. 2021, as adopted by Salvage section 5.1): ViT encoder + mask-transformer decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from models.maskable import MaskableClassifier


class MaskTransformer(nn.Module):
    """Segmenter's decoder: patch tokens and learnable class embeddings through transformer blocks, cosine patch x class scores."""

    def __init__(self, d_encoder: int, n_classes: int, d_model: int, n_blocks: int = 2, n_heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.cls_emb = nn.Parameter(trunc_normal_(torch.zeros(1, n_classes, d_model), std=0.02))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, qkv_bias=True) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(d_model)
        self.proj_patch = nn.Parameter(d_model**-0.5 * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(d_model**-0.5 * torch.randn(d_model, d_model))

    def forward(self, patches: Tensor) -> Tensor:
        """Scores (B, n_classes, n) = <patch_i, class_c> of L2-normalised projections, for patch tokens (B, n, d_encoder)."""
        n = patches.shape[1]
        x = torch.cat([self.proj_dec(patches), self.cls_emb.expand(patches.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patch_feats = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        class_feats = F.normalize(x[:, n:] @ self.proj_classes, dim=-1)
        return class_feats @ patch_feats.transpose(1, 2)


class SegmenterExplainer(nn.Module):
    """Explainer network: phi (B, n_sets, C, gh, gw) per patch and class; Salvage uses n_sets = 2 (phi+, phi-), ViT-Shapley 1."""

    def __init__(self, encoder: MaskableClassifier, num_outputs: int, n_sets: int = 2, decoder_blocks: int = 2,
                 decoder_heads: int | None = None) -> None:
        super().__init__()
        if not encoder.is_vit:
            raise ValueError("the Segmenter explainer needs a ViT backbone (patch tokens); got a CNN")
        encoder.backbone.reset_classifier(0)
        self.encoder = encoder
        self.num_outputs, self.n_sets = num_outputs, n_sets
        dim = encoder.backbone.embed_dim
        heads = decoder_heads or encoder.backbone.blocks[0].attn.num_heads
        self.decoder = MaskTransformer(dim, n_sets * num_outputs, dim, decoder_blocks, heads)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.encoder.patch_grid

    def forward(self, images: Tensor) -> Tensor:
        """Attribution sets (B, n_sets, C, gh, gw) for images (B, 3, H, W) in [0, 1]."""
        x = (images - self.encoder.mean) / self.encoder.std
        tokens = self.encoder.backbone.forward_features(x)[:, self.encoder.num_prefix_tokens:]
        scores = self.decoder(tokens)
        return scores.view(images.shape[0], self.n_sets, self.num_outputs, *self.patch_grid)
