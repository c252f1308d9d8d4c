"""A classifier made on the spot, for trying explain.py on real photographs without downloading weights:
`python explain.py --model examples.colour_model:make --images photo.jpg --method rex,gradcam`.

Four classes, red, green, blue and grey: a fixed 1x1 convolution scores how much each pixel's channel exceeds the
mean of the other two, a ReLU keeps the excess, and the global average (x 40) is the colour's logit; grey has the
constant logit 1 (no colour dominates), which is also what a fully masked (black) image gets. Its true explanation
is known: the pixels of the predicted colour, so the maps can be checked by eye.

`make_red` is its two-class variant, red against not red, at 128 px
(`python explain.py --model examples.colour_model:make_red --images photo.jpg --method rex`): the red logit as above,
"not red" the constant logit 1, so an image is red when its mean red excess (red minus the mean of green and blue,
less 0.05, where positive) passes 1 / 40; a fully masked (black) image is "not red".
"""
import torch
from torch import nn


class DominantColour(nn.Module):
    class_names = ["red", "green", "blue", "grey"]
    img_size = 224

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, kernel_size=1)
        with torch.no_grad():
            self.features.weight.copy_((torch.eye(3) * 1.5 - 0.5).view(3, 3, 1, 1))
            self.features.bias.fill_(-0.05)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        colour = 40 * torch.relu(self.features(images)).mean((2, 3))
        return torch.cat([colour, torch.ones_like(colour[:, :1])], 1)


def make() -> nn.Module:
    """The factory explain.py calls."""
    return DominantColour()


class RedOrNot(DominantColour):
    """Two classes: red, and not red (the constant logit 1)."""

    class_names = ["red", "not red"]
    img_size = 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = 40 * torch.relu(self.features(images)[:, :1]).mean((2, 3))
        return torch.cat([red, torch.ones_like(red)], 1)


def make_red() -> nn.Module:
    """The two-class factory: red against not red, 128 px."""
    return RedOrNot()
