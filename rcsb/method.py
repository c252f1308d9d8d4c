"""The "rcsb" explanation method: region-constrained visual counterfactuals (RVCEs) towards a target class.

    models = load_models(classifier_ckpt, extra={"bridge": bridge_ckpt}).models   # evaluation.load_models
    out = get("rcsb")(models, images, target=3, batch=batch, region="auto:occlusion", area=0.1)

The region comes from an attribution method of the classifier ("auto:METHOD": its map of the ORIGINAL predicted
class, cut into the top cells, see :func:`explainers.regions.cell_region`), the data's ground-truth object mask
("truth") or its bounding box dilated by a margin ("box", "box:4" pixels, "box:0.1" of the image side: room to draw
a new shape, see :func:`explainers.regions.box_region`), or a user-drawn mask file (a path to a PNG, nonzero = region).
`target` is the class B the counterfactual should be classified as (give it explicitly: the protocol's default
target is the predicted class itself).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer
from rcsb.guidance import CLF_INPUTS, rcsb_sample
from explainers.regions import make_region, parse_box_spec
from rcsb.stage import BridgeModule

__all__ = ["BRIDGE_WEIGHTS", "rcsb_explain"]

#: The bridge weights RCSB samples with: its EMA copy (I2SB's choice) or the raw trained network.
BRIDGE_WEIGHTS = ("ema", "raw")


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
    clf_input: str = "affine",
    bridge_weights: str = "ema",
    seed: int = 0,
) -> Explanation:
    """RCSB (Sobieski et al. 2025): region-constrained counterfactuals towards `target` with a guided I2SB bridge.

    The region is "auto:METHOD" (METHOD's map of the predicted class, top cells covering `area`, cells of `cells`
    px, default image size / 16), "truth" (batch["mask"]), "box" / "box:MARGIN" (its bounding box dilated by MARGIN
    pixels, or a fraction of the image side when MARGIN has a decimal point), a PNG mask file or a (B, 1, H, W)
    tensor; nfe, start, scale, tweedie, adam, normalise and clf_input ("affine": the classifier sees (x0_hat + 1) /
    2, "minmax": the authors' per-image min-max stretch) are the sampler's (rcsb.guidance.rcsb_sample);
    bridge_weights picks the bridge's "ema" weights (as I2SB samples) or its "raw" trained ones (as the authors'
    code loads them); seed draws the inpainting noise. Scores per image: target_probability / original_probability
    (p of `target` after / before), flipped (argmax == target), l1_inside (mean |change| over the region's pixels
    and channels), l2_inside (root mean square change there) and change_outside (max |change| outside the region:
    0).
    """
    if clf_input not in CLF_INPUTS:
        raise ValueError(f"clf_input must be one of {', '.join(CLF_INPUTS)}, got {clf_input!r}")
    if bridge_weights not in BRIDGE_WEIGHTS:
        raise ValueError(f"bridge_weights must be one of {', '.join(BRIDGE_WEIGHTS)}, got {bridge_weights!r}")
    if isinstance(region, str):
        parse_box_spec(region)
    b = images.shape[0]
    with torch.no_grad():
        probs = torch.softmax(model(images).float(), dim=1)
    n_classes = probs.shape[1]
    target = torch.as_tensor(target, device=images.device).long().expand(b)
    bad = ((target < 0) | (target >= n_classes)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"target class {int(target[bad[0]])} is out of range: the classifier has {n_classes} classes "
                         f"(0..{n_classes - 1})")
    if not isinstance(bridge, BridgeModule):
        raise TypeError(f"rcsb needs the bridge stage (rcsb.BridgeModule, a bridge checkpoint), "
                        f"got {type(bridge).__name__}")
    size = bridge.hparams["image_size"]
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"the bridge was trained on {size}x{size} images but the images are "
                         f"{images.shape[-2]}x{images.shape[-1]}; explain at the bridge's image size")
    predicted = probs.argmax(1)
    mask = make_region(region, model, images, predicted, batch, area, cells)

    device = images.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    counterfactual = rcsb_sample(
        bridge.denoiser(ema=bridge_weights == "ema"), bridge.schedule_on(device), model, images, mask, target, nfe=nfe,
        start=start, scale=scale, tweedie=tweedie, adam=adam, normalise=normalise, clf_input=clf_input,
        generator=generator,
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
