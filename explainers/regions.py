"""Regions of an image as pixel masks (B, 1, H, W) bool: where an edit may act (RCSB's counterfactuals, the
gradual interventions' region-restricted properties).

* :func:`cell_region`: RCSB's automated region extraction: |attribution| summed in c x c cells, the top cells kept
  until they cover a fraction ``area`` of the image (never less than one cell).
* :func:`mask_file_region`: a user-drawn mask file (nonzero pixels = region).
* :func:`make_region`: a region by name: "auto:METHOD" (any registered method's map), "truth" (the data's object
  mask), a mask file, or a tensor.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainers.protocol import get

Size = Union[int, Sequence[int]]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {(h, w)}")
    return h, w


def default_cell_size(size: Size) -> int:
    """RCSB's cell size c = image size / 16 (16 px cells at 256 px, 4 px at 64 px), at least 1; when that does not
    divide the image into whole cells, the largest smaller side that does."""
    h, w = _hw(size)
    c = max(1, min(h, w) // 16)
    while h % c or w % c:
        c -= 1
    return c


def cell_region(maps: Tensor, image_size: Size, cells: Optional[int] = None, area: float = 0.3) -> Tensor:
    """RCSB automated region: the top c x c cells of |maps| covering a fraction ``area`` of the image.

    Args:
        maps: (B, h, w) attribution maps of one class (pixel or patch-grid resolution; (B, 1, h, w) is accepted).
            Their absolute values count; maps not at the image size are upsampled (nearest) first.
        image_size: H (square) or (H, W) of the images.
        cells: the cell side c in pixels; default image_size / 16 (:func:`default_cell_size`). H and W must be
            multiples of c.
        area: the fraction a of the image the region covers: the k = ceil(a * n_cells) highest cells are kept
            (the fewest cells reaching a), at least one.

    Returns:
        (B, 1, H, W) bool pixel masks. Ties between equal cells go to the earlier cell in row-major order.
    """
    h, w = _hw(image_size)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, h, w) (one class), got shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("the attribution maps hold NaN or infinite values; no region can be extracted from them")
    if not 0.0 < float(area) <= 1.0:
        raise ValueError(f"area must be a fraction in (0, 1], got {area}")
    c = default_cell_size((h, w)) if cells is None else cells
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
        raise ValueError(f"cells (the cell side in pixels) must be a positive int, got {cells!r}")
    c = int(c)
    if h % c or w % c:
        raise ValueError(f"cells={c} does not divide the {h}x{w} image into whole cells; use a divisor of {h} and {w}")
    a = maps.detach().float().abs()
    if tuple(a.shape[-2:]) != (h, w):
        a = F.interpolate(a[:, None], size=(h, w), mode="nearest")[:, 0]
    gh, gw = h // c, w // c
    scores = a.reshape(a.shape[0], gh, c, gw, c).sum((2, 4)).flatten(1)  # (B, n_cells)
    n = gh * gw
    k = min(n, max(1, math.ceil(float(area) * n - 1e-9)))  # 1e-9: 0.3 * 10 is 3.0000000000000004
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True).view(-1, 1, gh, gw)
    return keep.repeat_interleave(c, dim=2).repeat_interleave(c, dim=3)


def mask_file_region(path: Union[str, os.PathLike], size: Size) -> Tensor:
    """A region drawn by the user: an image file (PNG) whose nonzero pixels are the region, as (1, 1, H, W) bool.

    Colour files count a pixel when any colour channel is nonzero (alpha is ignored). Raises FileNotFoundError for
    a missing file and ValueError for an unreadable file, a size other than the images' or an empty region.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = _hw(size)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"region mask file not found: {path!r}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("1", "L", "I", "I;16", "F"):
                arr = np.asarray(img) != 0
            else:
                arr = (np.asarray(img.convert("RGB")) != 0).any(-1)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read region mask file {path!r}: {err}") from None
    if arr.shape != (h, w):
        raise ValueError(
            f"region mask file {path!r} is {arr.shape[1]}x{arr.shape[0]} (width x height) but the images are "
            f"{w}x{h}; draw the mask at the image size"
        )
    if not arr.any():
        raise ValueError(f"region mask file {path!r} marks no pixel (all zero); nonzero pixels are the region to change")
    return torch.from_numpy(arr.copy()).view(1, 1, h, w)


def make_region(spec: Union[str, Tensor], model: nn.Module, images: Tensor, predicted: Tensor,
                batch: Optional[Mapping[str, Any]] = None, area: float = 0.3, cells: Optional[int] = None) -> Tensor:
    """The (B, 1, H, W) bool region named by ``spec``: "auto:METHOD", "truth", "box" / "box:MARGIN" (the truth's
    bounding box dilated by MARGIN, see :func:`box_region`), a mask file path, or given as a (B or 1, 1, H, W) tensor
    (nonzero = region)."""
    b, _, h, w = images.shape
    if isinstance(spec, Tensor):
        if spec.ndim != 4 or spec.shape[1] != 1 or spec.shape[0] not in (1, b) or tuple(spec.shape[-2:]) != (h, w):
            raise ValueError(f"a region tensor must be (B or 1, 1, {h}, {w}), got {tuple(spec.shape)}")
        region = (spec != 0).to(images.device).expand(b, 1, h, w)
        spec = "given as a tensor"
    elif not isinstance(spec, str) or not spec:
        raise ValueError(f"region must be 'auto:METHOD', 'truth' or a mask file path, got {spec!r}")
    elif spec.startswith("auto:"):
        name = spec[len("auto:"):]
        if name == "rcsb":
            raise ValueError("region 'auto:rcsb' would call RCSB recursively; name an attribution method, "
                             "e.g. auto:occlusion")
        try:
            method = get(name)
        except KeyError as err:
            raise ValueError(f"region {spec!r}: {err.args[0]}") from None
        maps = method(model, images, predicted).maps
        if maps is None:
            raise ValueError(f"region {spec!r}: method {name!r} returns no attribution maps; pick one that does")
        region = cell_region(maps.to(images.device), (h, w), cells, area)
    elif spec == "truth" or parse_box_spec(spec) is not None:
        if batch is None or batch.get("mask") is None:
            raise ValueError(f"region {spec!r} needs the data's ground-truth masks (batch['mask']); this data has "
                             "none. Use 'auto:METHOD' or a mask file instead")
        region = torch.as_tensor(batch["mask"]).to(images.device)
        if region.ndim == 3:
            region = region[:, None]
        if region.shape != (b, 1, h, w):
            raise ValueError(f"batch['mask'] has shape {tuple(region.shape)}, expected ({b}, 1, {h}, {w})")
        region = region != 0
        if spec != "truth":
            region = box_region(region, parse_box_spec(spec))
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"region {spec!r} is neither 'auto:METHOD', 'truth' nor an existing mask file")
        region = mask_file_region(spec, (h, w)).to(images.device).expand(b, 1, h, w)
    empty = (~region.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"region {spec!r} is empty for image(s) {empty}: there is nothing the counterfactual may change")
    return region


def box_region(mask: Tensor, margin: Union[int, float] = 0) -> Tensor:
    """The bounding box of each image's ``mask`` (B, 1, H, W), dilated by ``margin`` and clipped to the image.

    An int ``margin`` is pixels on every side; a float in [0, 1] is a fraction of the image's side (round(margin * H)
    rows above and below, round(margin * W) columns left and right). Returns (B, 1, H, W) bool. Raises ValueError for
    an image whose mask is empty (it has no box).
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    h, w = mask.shape[-2:]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be an int (pixels) or a float fraction of the image side, got {margin!r}")
    if isinstance(margin, float):
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"a fractional margin must lie in [0, 1] (of the image side), got {margin}; "
                             "give pixels as an int")
        dy, dx = round(margin * h), round(margin * w)
    elif margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    else:
        dy = dx = margin
    on = mask.detach() != 0
    rows, cols = on.any(-1)[:, 0], on.any(-2)[:, 0]  # (B, H), (B, W)
    empty = (~rows.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the mask of image(s) {empty} is empty: there is no object to draw a box around")
    ys, xs = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    top = torch.where(rows, ys, h).amin(1) - dy
    bottom = torch.where(rows, ys, -1).amax(1) + dy
    left = torch.where(cols, xs, w).amin(1) - dx
    right = torch.where(cols, xs, -1).amax(1) + dx
    inside_y = (ys[None] >= top[:, None]) & (ys[None] <= bottom[:, None])
    inside_x = (xs[None] >= left[:, None]) & (xs[None] <= right[:, None])
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def parse_box_spec(spec: str) -> Union[int, float, None]:
    """The margin of a "box" region spec ("box": 0, "box:4": 4 pixels, "box:0.1": a tenth of the image side), or
    None when ``spec`` is not a box spec."""
    if spec == "box":
        return 0
    if not spec.startswith("box:"):
        return None
    value = spec[len("box:"):]
    try:
        margin: Union[int, float] = float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        raise ValueError(f"region {spec!r}: the margin must be pixels (box:4) or a fraction of the image side "
                         f"(box:0.1), got {value!r}") from None
    if margin < 0 or (isinstance(margin, float) and margin > 1):
        raise ValueError(f"region {spec!r}: the margin must be >= 0 pixels (box:4) or a fraction in [0, 1] of the "
                         "image side (box:0.1)")
    return margin
