"""A fixed black box for the ReX regression fixture: class k's logit is a random spatial weighting of how far each
pixel's channel sum exceeds 1.5 (masked pixels, 0, add nothing), and class 0 has only a bias, so the blank image is
class 0."""
import torch
from torch import nn


class SpatialWeights(nn.Module):
    def __init__(self, classes: int = 3, size: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        weight = torch.rand(classes, size, size, generator=g) ** 2
        weight[0] = 0
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.tensor([30.0] + [0.0] * (classes - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        excess = torch.relu(x.sum(1) - 1.5)
        return torch.einsum("bhw,khw->bk", excess, self.weight) / 2 + self.bias
