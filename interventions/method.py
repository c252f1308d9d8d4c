"""The gradual-intervention test as a registered explanation method (poster sections 3-4, Algorithm 1)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer
from interventions.gradual import gradual_intervention_test
from explainers.regions import make_region
from interventions.properties import get_property


@explainer("intervention", access="black")
def intervention_test(
    model: nn.Module, images: Tensor, target: Tensor, batch: dict[str, Any] | None = None, dataset: Any = None,
    *, property: str, region: str | None = None, area: float = 0.3, num_steps: int | None = None,
    num_permutations: int = 1000, delta: float = 0.01, plus_one: bool = True, seed: int = 0, frames: int = 5,
    batch_size: int = 256,
) -> Explanation:
    """Gradual interventions (Algorithm 1): the target probability along a property, S = E_x|dF/dx|, p-value, flips.

    `property` is a name of `interventions.properties` or frames:PATH; `region` (a mask file, "truth" or
    "auto:METHOD" with `area`, see `explainers.regions.make_region`) restricts the image properties to a region."""
    try:
        factory = get_property(property)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    index = torch.as_tensor((batch or {}).get("index", torch.arange(images.shape[0])))
    context = {**(batch or {}), "image": images, "index": index}
    if region is not None:
        context["region"] = make_region(region, model, images, target, batch, area)
    try:
        edit = factory(context, dataset)
    except (KeyError, AttributeError, TypeError) as err:
        raise ValueError(
            f"property {property!r} needs what these images do not have ({err}): ground-truth masks or a synthetic "
            "dataset; run it on a datamodule split with --data"
        ) from err
    g = torch.Generator().manual_seed(seed)
    res = gradual_intervention_test(model, images, edit, num_steps, num_permutations, delta, g, target=target,
                                    plus_one=plus_one, batch_size=batch_size)
    with torch.no_grad():
        strip = torch.stack([edit(images, float(x)) for x in torch.linspace(0, 1, frames)], 1).clamp(0, 1)
    scores = {"S": res.gradient, "p": res.p_value, "flips": res.flip_count, "significant": res.significant}
    return Explanation(curve=res.curve, x=res.x, frames=strip, scores=scores)
