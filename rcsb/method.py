"""The "rcsb" explanation method: region-constrained visual counterfactuals (RVCEs) towards a target class.

    models = load_models(classifier_ckpt, extra={"bridge": bridge_ckpt}).models   # evaluation.load_models
    out = get("rcsb")(models, images, target=3, batch=batch, region="auto:occlusion", area=0.1)

The region comes from an attribution method of the classifier ("auto:METHOD": its map of the ORIGINAL predicted
class, cut into the top cells, see :func:`rcsb.regions.cell_region`), the data's ground-truth object mask
("truth"), or a user-drawn mask file (a path to a PNG, nonzero = region). `target` is the class B the counterfactual
should be classified as (give it explicitly: the protocol's default target is the predicted class itself).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer, get
from rcsb.guidance import rcsb_sample
from rcsb.regions import cell_region, mask_file_region

__all__ = ["make_region", "rcsb_explain"]


def make_region(spec: Union[str, Tensor], model: nn.Module, images: Tensor, predicted: Tensor,
                batch: Optional[Mapping[str, Any]] = None, area: float = 0.3, cells: Optional[int] = None) -> Tensor:
    """The (B, 1, H, W) bool region named by ``spec``: "auto:METHOD", "truth", a mask file path, or given as a
    (B or 1, 1, H, W) tensor (nonzero = region)."""
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
    elif spec == "truth":
        if batch is None or batch.get("mask") is None:
            raise ValueError("region 'truth' needs the data's ground-truth masks (batch['mask']); this data has none. "
                             "Use 'auto:METHOD' or a mask file instead")
        region = torch.as_tensor(batch["mask"]).to(images.device)
        if region.ndim == 3:
            region = region[:, None]
        if region.shape != (b, 1, h, w):
            raise ValueError(f"batch['mask'] has shape {tuple(region.shape)}, expected ({b}, 1, {h}, {w})")
        region = region != 0
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"region {spec!r} is neither 'auto:METHOD', 'truth' nor an existing mask file")
        region = mask_file_region(spec, (h, w)).to(images.device).expand(b, 1, h, w)
    empty = (~region.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"region {spec!r} is empty for image(s) {empty}: there is nothing the counterfactual may change")
    return region


@explainer("rcsb", access="white", needs=("bridge",))
def rcsb_explain(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    bridge: nn.Module,
    batch: Optional[Mapping[str, Any]] = None,
    region: Union[str, Tensor] = "auto:occlusion",
    area: float = 0.3,
    cells: Optional[int] = None,
    nfe: int = 100,
    start: int = 650,
    scale: float = 1.5,
    tweedie: bool = True,
    adam: bool = True,
    normalise: bool = True,
    seed: int = 0,
) -> Explanation:
    """RCSB (Sobieski et al. 2025): region-constrained counterfactuals towards `target` with a guided I2SB bridge.

    The region is "auto:METHOD" (METHOD's map of the predicted class, top cells covering `area`, cells of `cells`
    px, default image size / 16), "truth" (batch["mask"]), a PNG mask file or a (B, 1, H, W) tensor; nfe, start, scale, tweedie, adam and
    normalise are the sampler's (rcsb.guidance.rcsb_sample); seed draws the inpainting noise. Scores per image:
    target_probability / original_probability (p of `target` after / before), flipped (argmax == target),
    l1_inside (mean |change| over the region's pixels and channels), l2_inside (root mean square change there) and
    change_outside (max |change| outside the region: 0).
    """
    b = images.shape[0]
    with torch.no_grad():
        probs = torch.softmax(model(images).float(), dim=1)
    n_classes = probs.shape[1]
    target = torch.as_tensor(target, device=images.device).long().expand(b)
    bad = ((target < 0) | (target >= n_classes)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"target class {int(target[bad[0]])} is out of range: the classifier has {n_classes} classes "
                         f"(0..{n_classes - 1})")
    hparams = getattr(bridge, "hparams", None)
    size = hparams.get("image_size") if isinstance(hparams, Mapping) else None
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"the bridge was trained on {size}x{size} images but the images are "
                         f"{images.shape[-2]}x{images.shape[-1]}; explain at the bridge's image size")
    predicted = probs.argmax(1)
    mask = make_region(region, model, images, predicted, batch, area, cells)

    device = images.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    schedule = bridge.schedule_on(device) if hasattr(bridge, "schedule_on") else bridge.schedule
    net = bridge.denoiser() if hasattr(bridge, "denoiser") else bridge
    counterfactual = rcsb_sample(
        net, schedule, model, images, mask, target, nfe=nfe, start=start, scale=scale,
        tweedie=tweedie, adam=adam, normalise=normalise, generator=generator,
    )

    rows = torch.arange(b, device=device)
    with torch.no_grad():
        after = torch.softmax(model(counterfactual).float(), dim=1)
    diff = (counterfactual - images.detach()).float()
    inside = mask.expand_as(diff).float()
    n_inside = inside.flatten(1).sum(1).clamp_min(1)
    outside = (diff.abs() * (1 - inside)).flatten(1)
    scores = {
        "target_probability": after[rows, target],
        "original_probability": probs[rows, target],
        "flipped": after.argmax(1) == target,
        "l1_inside": (diff.abs() * inside).flatten(1).sum(1) / n_inside,
        "l2_inside": ((diff**2 * inside).flatten(1).sum(1) / n_inside).sqrt(),
        "change_outside": outside.amax(1) if outside.shape[1] else torch.zeros(b, device=device),
    }
    return Explanation(target=target, counterfactual=counterfactual, region=mask, scores=scores)
