"""Named properties: factories (batch, dataset) -> intervention, for explain.py, the callback and configs.

Properties of any image (poster section 2's global and region edits) act on `batch["region"]` when the batch has
one (a (B, 1, H, W) mask, e.g. from `explainers.regions.make_region`), else on the whole image: brightness (to
black), contrast (to the image's mean colour), saturation (to grey), hue (half a turn), blur (to a Gaussian blur of
sigma = image size / 32) and noise (Gaussian, sigma 0.2, fixed per image). `frames:PATH` is a precomputed sequence
(`interventions.intervene.load_sequences`). The synthetic scenes' properties use their ground truth (object mask,
cue renders).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from interventions.intervene import (
    AlphaBlend,
    BackgroundReplacement,
    Brightness,
    CueStrength,
    HueShift,
    Intervention,
    load_sequences,
)

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


def _region(batch: dict[str, Tensor]) -> Tensor:
    images = batch["image"]
    region = batch.get("region")
    return torch.ones_like(images[:, :1]) if region is None else region.to(images.device, images.dtype)


def _towards(edited: Callable[[Tensor], Tensor]) -> PropertyFactory:
    """A property that blends the region towards `edited(images)`: I_x = I (1 - x m) + x m edited(I)."""

    def factory(batch: dict[str, Tensor], dataset: Any) -> Intervention:
        return AlphaBlend(_region(batch), edited(batch["image"]))

    factory.__doc__ = edited.__doc__
    return factory


def _flat(images: Tensor) -> Tensor:
    """Contrast: the region faded to the image's mean colour."""
    return images.mean((2, 3), keepdim=True).expand_as(images)


def _grey(images: Tensor) -> Tensor:
    """Saturation: the region faded to its greyscale (ITU-R 601 luma)."""
    return TF.rgb_to_grayscale(images, num_output_channels=3)


def _blurred(images: Tensor) -> Tensor:
    """Blur: the region faded to a Gaussian blur with sigma = image size / 32."""
    sigma = max(images.shape[-2:]) / 32
    kernel = 2 * round(3 * sigma) + 1
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _noisy(images: Tensor) -> Tensor:
    """Noise: Gaussian noise of sigma 0.2 added to the region (the same draw at every x, seeded by the image)."""
    noise = [torch.randn(im.shape, generator=torch.Generator().manual_seed(int(im.sum().item() * 1000) % 2**31))
             for im in images.detach().cpu()]
    return (images + 0.2 * torch.stack(noise).to(images)).clamp(0, 1)


def brightness(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Brightness: the region darkened to black."""
    return Brightness(_region(batch), factor=0.0)


def hue(batch: dict[str, Tensor], dataset: Any) -> Intervention:
    """Hue: the region's hue rotated by half a turn (to the complementary colour)."""
    return HueShift(_region(batch), shift=0.5)


def frames(path: str) -> PropertyFactory:
    """A precomputed sequence (a folder of frames or an npz / pt of N images per image, with their x values)."""
    sequence = load_sequences(path)

    def factory(batch: dict[str, Tensor], dataset: Any) -> Intervention:
        images = batch["image"]
        if sequence.frames.shape[0] != images.shape[0] or sequence.frames.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"the sequences in {path!r} are {sequence.frames.shape[0]} x {sequence.frames.shape[1]} frames of "
                f"{sequence.frames.shape[-1]}x{sequence.frames.shape[-2]} px, but the batch is {images.shape[0]} "
                f"images of {images.shape[-1]}x{images.shape[-2]} px; give one sequence per image at the model's size"
            )
        return sequence

    return factory


PROPERTIES: dict[str, PropertyFactory] = {
    "brightness": brightness,
    "contrast": _towards(_flat),
    "saturation": _towards(_grey),
    "hue": hue,
    "blur": _towards(_blurred),
    "noise": _towards(_noisy),
    "cue": cue,
    "object_fade": object_fade,
    "object_darkness": object_darkness,
    "object_hue": object_hue,
    "background": background_grey,
}


def get_property(name: str) -> PropertyFactory:
    """The property factory registered as `name`, or `frames:PATH`; unknown names list the known ones."""
    if name.startswith("frames:"):
        try:
            return frames(name[len("frames:"):])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"property {name!r}: {err}") from None
    if name not in PROPERTIES:
        raise KeyError(f"unknown property {name!r}; available: {', '.join(sorted(PROPERTIES))}, or frames:PATH")
    return PROPERTIES[name]
