"""Attribution-map helpers: patch maps (B, C, gh, gw) or (B, gh, gw) to pixel maps (B, H, W)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def select_class(maps: Tensor, target: Tensor | None) -> Tensor:
    """The target class's map (B, gh, gw) of a per-class map (B, C, gh, gw); other shapes pass through."""
    if maps.dim() != 4:
        return maps
    if target is None:
        raise ValueError("a per-class map (B, C, gh, gw) needs `target` to pick one class")
    return maps[torch.arange(maps.shape[0], device=maps.device), target.to(maps.device)]


def to_pixel_map(maps: Tensor, size: tuple[int, int], target: Tensor | None = None, mode: str = "nearest") -> Tensor:
    """Upsample a patch-level map to pixel level; with (B, C, gh, gw) maps, `target` (B,) picks the class."""
    maps = select_class(maps, target)
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, gh, gw) or (B, C, gh, gw), got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, **kw)[:, 0]
