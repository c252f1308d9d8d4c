"""Named properties of the synthetic scenes: factories (batch, dataset) -> intervention, for callback and configs."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from interventions.intervene import AlphaBlend, BackgroundReplacement, Brightness, CueStrength, HueShift, Intervention

PropertyFactory = Callable[[dict[str, Tensor], Any], Intervention]


def cue(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """The spurious cue from absent (x = 0) to full strength (x = 1) on the cue-free render."""
    return CueStrength.from_dataset(dataset, batch["index"])


def object_fade(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Fade the target object into its image's mean background colour: the shape, a real cause, disappears at x = 1."""
    mask = batch["mask"].float()
    background = 1 - mask
    area = background.sum((2, 3), keepdim=True).clamp_min(1)
    mean_bg = (batch["image"] * background).sum((2, 3), keepdim=True) / area
    return AlphaBlend(batch["mask"], mean_bg)


def object_darkness(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Darken the target object to black (the poster's 'dark fur' property)."""
    return Brightness(batch["mask"], factor=0.0)


def object_hue(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Rotate the target object's hue by half a turn (to its complementary colour)."""
    return HueShift(batch["mask"], shift=0.5)


def background_grey(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Replace everything but the target object with mid grey (the poster's background property)."""
    return BackgroundReplacement(batch["mask"], (0.5, 0.5, 0.5))


PROPERTIES: dict[str, PropertyFactory] = {
    "cue": cue,
    "object_fade": object_fade,
    "object_darkness": object_darkness,
    "object_hue": object_hue,
    "background": background_grey,
}


def get_property(name: str) -> PropertyFactory:
    """The property factory registered as `name`; unknown names list the known ones."""
    if name not in PROPERTIES:
        raise KeyError(f"unknown property {name!r}; available: {', '.join(sorted(PROPERTIES))}")
    return PROPERTIES[name]
