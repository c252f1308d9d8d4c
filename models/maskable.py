"""Maskable classifier: forward(images, patch_mask) drops masked ViT patches exactly (ViT-Shapley's surrogate input)."""
from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from models.small_cnn import small_cnn  # noqa: F401  (registers the benchmarks' CNN in timm)
from models.synthetic_vit import vit_tiny_convpatch16  # noqa: F401  (registers the synthetic ViTs in timm)
from models.masking import MaskValue, apply_mask, mask_fill, patch_to_pixel
from models.weights import resolve_pretrained


def create_backbone(
    name: str, num_classes: int, pretrained: bool = False, pretrained_file: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model by name; an unknown name fails with the closest names timm knows. Pretrained weights are resolved
    to a local file first (`models.weights.resolve_pretrained`: `pretrained_file`, the cache, or a download)."""
    if not timm.is_model(name):
        stem = name.split("_")[0]
        close = timm.list_models(f"{stem}*")[:12]
        raise ValueError(
            f"unknown backbone {name!r}: timm has no model {name!r}. "
            f"Models starting with {stem!r}: {', '.join(close) or 'none'} (see timm.list_models())."
        )
    if pretrained or pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": resolve_pretrained(name, pretrained_file)}
    return timm.create_model(name, pretrained=pretrained or pretrained_file is not None, num_classes=num_classes, **kwargs)


class MaskableClassifier(nn.Module):
    """Wraps a timm backbone: normalises [0, 1] images, and masks patches (ViT: attention; CNN: pixels set to the
    mask value of `models.masking`, by default the normalisation mean; `mask_value` overrides it for every method)."""

    def __init__(
        self, backbone: nn.Module, img_size: int | None = None, patch_size: int | None = None,
        mask_value: MaskValue = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)
        self.is_vit = isinstance(backbone, VisionTransformer)
        self.mask_value = mask_value
        if self.is_vit:
            if backbone.global_pool != "token":
                raise ValueError(
                    f"patch masking needs class-token pooling, but the ViT pools with {backbone.global_pool!r}; "
                    "create it with global_pool='token'"
                )
            self.patch_grid = tuple(backbone.patch_embed.grid_size)
            self.num_prefix_tokens = backbone.num_prefix_tokens
            self.drops_tokens = (
                backbone.pos_embed is not None and not backbone.dynamic_img_size
                and isinstance(backbone.patch_drop, nn.Identity) and getattr(backbone.patch_embed, "flatten", True)
            )
            self.embeds_per_patch = hasattr(backbone.patch_embed, "forward_patches")
        else:
            self.drops_tokens = self.embeds_per_patch = False
            if patch_size is None or img_size is None:
                raise ValueError("a CNN backbone needs `img_size` and `patch_size` to define its patch grid for masking")
            if img_size % patch_size:
                raise ValueError(f"image size {img_size} is not divisible by patch_size {patch_size}")
            self.patch_grid = (img_size // patch_size, img_size // patch_size)

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    def forward(self, images: Tensor, patch_mask: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        """Logits (B, C) for images (B, 3, H, W) in [0, 1]; patch_mask (B, n_patches) bool, True = visible.

        With `index` (M,), row m is image `index[m]` under `patch_mask[m]` (M, n_patches): many masks of few images.
        A ViT then embeds the patches of each image that `index` names once and gathers them per row (its stem sees
        every patch on its own, so this is exact), whenever that is cheaper than embedding each row's visible patches."""
        rows = images.shape[0] if index is None else index.shape[0]
        if index is not None and (patch_mask is None or index.dim() != 1):
            raise ValueError(f"`index` (M,) needs a patch_mask (M, n_patches); got index of shape {tuple(index.shape)} "
                             f"and {'no patch_mask' if patch_mask is None else 'a patch_mask'}")
        if patch_mask is not None and patch_mask.shape != (rows, self.num_patches):
            raise ValueError(
                f"patch_mask must have shape ({'len(index)' if index is not None else 'batch'}, {self.num_patches}) "
                f"for patch grid {self.patch_grid}, got {tuple(patch_mask.shape)}"
            )
        if index is not None:
            images, index = self._rows(images, patch_mask, index)
        if patch_mask is not None and not self.is_vit:
            images = apply_mask(images, self.pixel_mask(patch_mask, images.shape[-2:]), mask_fill(self, images=images))
        x = (images - self.mean) / self.std
        if patch_mask is None or not self.is_vit:
            return self.backbone(x)
        if self.drops_tokens and len(patch_mask):
            return self._forward_visible(x, patch_mask.bool(), index)
        return self._forward_attention_masked(x, patch_mask.bool())

    def _rows(self, images: Tensor, patch_mask: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The images named by `index` and each row's position among them, when a ViT embeds their patches once;
        else the rows' own images (M, 3, H, W) and None. Sharing wins unless the visible patches are fewer than all
        patches of the images named (a per-patch stem can embed the visible ones alone)."""
        if not len(index):
            return images[:0], None
        if int(index.min()) < 0 or int(index.max()) >= images.shape[0]:
            raise ValueError(f"`index` names images {int(index.min())}..{int(index.max())}, but there are "
                             f"{images.shape[0]} images")
        used, inverse = torch.unique(index, return_inverse=True)
        if self.drops_tokens and (not self.embeds_per_patch or len(used) * self.num_patches <= int(patch_mask.sum())):
            return (images[used] if len(used) < images.shape[0] else images), inverse
        return images[index], None

    def _forward_attention_masked(self, x: Tensor, patch_mask: Tensor) -> Tensor:
        """Logits with every patch token computed and the masked ones removed from attention as keys."""
        prefix = patch_mask.new_ones(patch_mask.shape[0], self.num_prefix_tokens)
        keys = torch.cat([prefix, patch_mask], dim=1)[:, None, None, :]
        return self.backbone.forward_head(self.backbone.forward_features(x, attn_mask=keys))

    def _forward_visible(self, x: Tensor, patch_mask: Tensor, index: Tensor | None = None) -> Tensor:
        """Logits from the visible patch tokens only (the same numbers as attention masking, at the cost of the
        visible patches): rows are grouped by their number of visible patches, each group padded to its largest
        count, and only the padding is masked out of attention. With `index`, row m's tokens are gathered from
        image `index[m]`'s embedded patches."""
        counts = patch_mask.sum(1)
        embedded = None if index is None else self.backbone.patch_embed(x)
        groups, logits = _count_groups(counts), []
        for rows in groups:
            k = int(counts[rows].max())
            chosen = torch.argsort((~patch_mask[rows]).to(torch.uint8), dim=1, stable=True)[:, :k]
            valid = torch.arange(k, device=x.device)[None] < counts[rows, None]
            if embedded is not None:
                tokens = embedded[index[rows][:, None], chosen]
            elif self.embeds_per_patch:
                tokens = self.backbone.patch_embed.forward_patches(x[rows], chosen)
            else:
                tokens = self.backbone.patch_embed(x[rows])
                tokens = tokens.gather(1, chosen[..., None].expand(-1, -1, tokens.shape[-1]))
            logits.append(self._visible_logits(tokens, chosen, valid))
        return torch.cat(logits)[torch.argsort(torch.cat(groups))]

    def _visible_logits(self, tokens: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """Logits of rows whose patch tokens (b, k, D) are the patches `index` (b, k); `valid` marks the real ones."""
        vit, (b, k) = self.backbone, index.shape
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        n_prefix = self.num_prefix_tokens
        if vit.no_embed_class:
            h = torch.cat([*prefix, tokens + vit.pos_embed[0][index]], dim=1)
        else:
            h = torch.cat([*prefix, tokens], dim=1)
            h = h + torch.cat([vit.pos_embed[:, :n_prefix].expand(b, -1, -1), vit.pos_embed[0, n_prefix:][index]], 1)
        h = vit.norm_pre(vit.pos_drop(h))
        keys = None if bool(valid.all()) else torch.cat([valid.new_ones(b, n_prefix), valid], 1)[:, None, None, :]
        for block in vit.blocks:
            h = block(h, attn_mask=keys)
        return vit.forward_head(vit.norm(h))

    def pixel_mask(self, patch_mask: Tensor, size: tuple[int, int]) -> Tensor:
        """Pixel mask (B, 1, H, W) bool of a patch mask (B, n_patches)."""
        return patch_to_pixel(patch_mask, self.patch_grid, size)


def _count_groups(counts: Tensor, slack: float = 1.25, min_rows: int = 16) -> list[Tensor]:
    """Row indices grouped by ascending count: a group grows while a count is at most `slack` x its first count + 1,
    or while it holds fewer than `min_rows` rows, so padding each group to its largest count wastes little."""
    order = torch.argsort(counts, stable=True)
    ordered = counts[order].tolist()
    groups, start = [], 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or (ordered[i] > slack * ordered[start] + 1 and i - start >= min_rows):
            groups.append(order[start:i])
            start = i
    return groups


def build_classifier(
    backbone: str,
    num_classes: int,
    img_size: int,
    pretrained: bool = False,
    patch_size: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    pretrained_file: str | None = None,
) -> MaskableClassifier:
    """A MaskableClassifier around the timm model `backbone` (ViTs get `img_size`, CNNs a `patch_size` grid)."""
    kwargs = dict(backbone_kwargs or {})
    if timm.is_model(backbone) and timm.models.is_model_in_modules(backbone, ["vision_transformer", "synthetic_vit"]):
        kwargs.setdefault("img_size", img_size)
    net = create_backbone(backbone, num_classes, pretrained=pretrained, pretrained_file=pretrained_file, **kwargs)
    return MaskableClassifier(net, img_size=img_size, patch_size=patch_size)
