"""Joint image/mask transforms of the real-image datamodules (torchvision.transforms.v2).

Samples are dicts {"image": PIL image, "label": long tensor[, "mask": tv_tensors.Mask]}: v2 applies every
geometric transform to the image and the mask alike and the photometric ones (ColorJitter) to the image only.
Outputs stay in [0, 1]; normalisation lives inside the model, so masking and edits happen in pixel space.
"""

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

RESIZE_RATIO = 256 / 224
CROP_SCALE = (0.8, 1.0)


def resize_size(img_size: int) -> int:
    """Shorter-side resize before cropping, 256 px for a 224 px crop (ViT-Shapley protocol, Salvage Sec. 5.1)."""
    return round(img_size * RESIZE_RATIO)


def _to_float() -> v2.ToDtype:
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def train_transform(img_size: int) -> v2.Compose:
    """Training augmentation: resize, random resized crop, horizontal flip, colour jitter (Salvage Sec. 5.1)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize_size(img_size)),
            v2.RandomResizedCrop(img_size, scale=CROP_SCALE),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.1)], p=0.8),
            _to_float(),
        ]
    )


def eval_transform(img_size: int) -> v2.Compose:
    """Evaluation transform: shorter-side resize then centre crop (Salvage Sec. 5.1)."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize_size(img_size)), v2.CenterCrop(img_size), _to_float()])
