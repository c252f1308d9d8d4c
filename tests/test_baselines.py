"""Baseline attribution methods: every registered method on a tiny ViT and a tiny CNN, hand-computed cases."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import explainers
from evaluation import discover
from explainers.baselines import kernel_shap, occlusion, rise, rise_masks, saliency
from explainers.maps import to_pixel_map
from models import BlackBoxModel

FAST = {
    "kernel_shap": {"n_samples": 24},
    "lime": {"n_samples": 24},
    "rise": {"n_masks": 32},
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2, "n_steps": 2},
    "gradient_shap": {"n_samples": 2, "n_baselines": 2},
    "rex": {"n_partitions": 1, "preset": "fast"},
}
VIT_ONLY = {"attention_rollout"}
discover()
METHODS = [m for m in explainers.available() if not explainers.get(m).needs and m != "intervention"]


@pytest.fixture(scope="module")
def models():
    from models import build_classifier
    from tests.conftest import TINY_VIT

    torch.manual_seed(0)
    spec = {k: v for k, v in TINY_VIT.items() if k != "pretrained"}
    vit = build_classifier(**spec).eval()
    cnn = build_classifier("resnet10t", num_classes=4, img_size=32, patch_size=8).eval()
    return {"vit": vit, "cnn": cnn}


@pytest.mark.parametrize("kind", ["vit", "cnn"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_maps_in_the_shared_convention(models, method, kind):
    model = models[kind]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    spec = explainers.get(method)
    if method in VIT_ONLY and kind == "cnn":
        with pytest.raises(ValueError, match="needs a ViT"):
            spec(model, images, **FAST.get(method, {}))
        return
    maps = spec(model, images, **FAST.get(method, {})).maps
    assert maps.shape in {(2, 4, 4), (2, 32, 32)}, (method, maps.shape)
    assert torch.isfinite(maps).all()
    target = model(images).argmax(1)
    assert to_pixel_map(maps, (32, 32), target).shape == (2, 32, 32)


class PatchLinear(nn.Module):
    """logit_0 = sum_k w_k * (sum of patch k's pixels), logit_1 = 0, on a 2x2 patch grid of 8x8 images."""

    patch_grid = (2, 2)

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        w = torch.tensor(weights, dtype=torch.float32).view(1, 1, 2, 2)
        self.register_buffer("w", nn.functional.interpolate(w, size=(8, 8), mode="nearest"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = (images * self.w).sum((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def _patch_sums(images: torch.Tensor) -> torch.Tensor:
    return images.sum(1).view(-1, 2, 4, 2, 4).sum((2, 4))


def test_occlusion_and_kernel_shap_recover_a_linear_model_exactly():
    weights = [1.0, -2.0, 0.5, 3.0]
    model = PatchLinear(weights)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor(weights).view(1, 2, 2) * _patch_sums(images)
    target = torch.zeros(2, dtype=torch.long)
    assert torch.allclose(occlusion(model, images, target).maps, expected, atol=1e-4)
    assert torch.allclose(kernel_shap(model, images, target, n_samples=64).maps, expected, atol=1e-2)


def test_saliency_of_a_linear_model_is_its_weight_magnitude():
    model = PatchLinear([1.0, -2.0, 0.5, 3.0])
    images = torch.rand(1, 3, 8, 8)
    maps = saliency(model, images, torch.zeros(1, dtype=torch.long)).maps
    assert torch.allclose(maps[0], model.w[0, 0].abs())


def test_rise_masks_and_map_favour_the_region_that_drives_the_class():
    g = torch.Generator().manual_seed(0)
    masks = rise_masks(400, 4, (16, 16), 0.5, g)
    assert masks.shape == (400, 16, 16) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.05
    model = PatchLinear([0.03, 0.0, 0.03, 0.0])
    maps = rise(model, torch.ones(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), n_masks=256, cells=2).maps
    assert maps[0, :, :4].mean() > maps[0, :, 4:].mean() + 0.05


def test_attention_rollout_is_a_distribution_over_tokens(models):
    blocks = models["vit"].backbone.blocks
    before = [b.attn.fused_attn for b in blocks]
    maps = explainers.get("attention_rollout")(models["vit"], torch.rand(2, 3, 32, 32)).maps
    assert (maps >= 0).all() and (maps.flatten(1).sum(1) <= 1 + 1e-5).all()
    assert [b.attn.fused_attn for b in blocks] == before


def test_black_box_model_refuses_gradient_and_internal_methods():
    model = BlackBoxModel(PatchLinear([1.0, 0.0, 0.0, 0.0]), img_size=8, patch_grid=(2, 2))
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="white-box method.*black-box model.*occlusion"):
        explainers.get("gradcam")(model, images)
    with pytest.raises(ValueError, match="grey-box method"):
        explainers.get("eigencam").check_access(model)
    assert explainers.get("occlusion")(model, images).maps.shape == (1, 2, 2)


def test_eigencam_refuses_a_full_resolution_layer_instead_of_exhausting_memory():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="9216 spatial positions"):
        explainers.get("eigencam")(model, torch.rand(1, 3, 96, 96), torch.tensor([0]))
