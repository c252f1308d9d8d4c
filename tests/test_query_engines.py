"""Query engines (models.queries): eager, torch.compile and ONNX Runtime give the same probabilities, ReX maps and
black-box baseline maps on a tiny CNN and the tiny ViT."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import rex
from explainers.baselines import kernel_shap, lime, occlusion, rise
from models import QueryEngine, build_classifier

COMPILE = pytest.param(
    "compile", marks=[pytest.mark.slow, pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(),
                                                           reason="torch.compile is unavailable here")],
)
ENGINES = ["onnx", COMPILE]


class TinyCNN(nn.Module):
    """Two strided convolutions on [0, 1] images with its normalisation mean inside and a 4 x 4 patch grid."""

    patch_grid = (4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.mean)


class RegionScore(nn.Module):
    """Class 1 iff at least 5 of the 18 pixels of two bright 3 x 3 regions are visible (red channel): the logit is an
    integer minus 4.5 for mutants of `_region_image`, a margin of 0.5 from every decision."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.zeros(3, 16, 16)
        weight[0, 1:4, 1:4] = weight[0, 10:13, 10:13] = 1.0
        self.score = nn.Linear(3 * 16 * 16, 1)
        with torch.no_grad():
            self.score.weight.copy_(weight.flatten()[None])
            self.score.bias.fill_(-4.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x.flatten(1))
        return torch.cat([torch.zeros_like(s), s], 1)


def _region_image() -> torch.Tensor:
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, 1:4, 1:4] = x[:, :, 10:13, 10:13] = 1.0
    return x


def _tiny_vit() -> nn.Module:
    from tests.conftest import TINY_VIT

    torch.manual_seed(0)
    return build_classifier(**{k: v for k, v in TINY_VIT.items() if k != "pretrained"}).eval()


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("make", [_tiny_cnn, _tiny_vit], ids=["cnn", "vit"])
def test_engine_probabilities_equal_eager(make, engine, one_thread):
    model = make()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g)  # batches of 4 only: one compilation
    index = torch.tensor([0, 2, 1, 3, 0, 2, 2, 1])
    visible = torch.rand(8, 32, 32, generator=g) < 0.6
    eager, other = QueryEngine(model, max_batch=4), QueryEngine(model, max_batch=4, engine=engine)
    assert torch.allclose(other.probabilities(images), eager.probabilities(images), atol=1e-5)
    masked = other.masked_probabilities(images, index, visible)
    assert torch.allclose(masked, eager.masked_probabilities(images, index, visible), atol=1e-5)
    assert masked.shape == (8, 4 if make is _tiny_cnn else 6)


@pytest.mark.parametrize("engine", ENGINES)
def test_rex_maps_are_identical_under_every_engine(engine, one_thread):
    model, images = RegionScore().eval(), _region_image()
    options = {"n_partitions": 4, "preset": rex.PRESETS["paper"].but(min_size=4), "mask_value": 0.0, "seed": 3}
    eager = rex.ReX(**options).explain(model, images)
    other = rex.ReX(**options, engine=engine).explain(model, images)
    assert eager.target.tolist() == [1] and bool(eager.found.all())
    assert torch.equal(other.maps, eager.maps) and eager.maps.amax() > 0
    assert torch.equal(other.explanations, eager.explanations)
    assert torch.equal(other.mutants_evaluated, eager.mutants_evaluated)


@pytest.mark.parametrize("engine", ENGINES)
def test_black_box_baselines_equal_eager(engine, one_thread):
    model = _tiny_cnn()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3])
    methods = [(rise, {"n_masks": 40, "chunk": 16}), (kernel_shap, {"n_samples": 48, "chunk": 16}),
               (lime, {"n_samples": 48, "chunk": 16}), (occlusion, {"chunk": 8})]
    for method, options in methods:
        eager = method(model, images, target, **options).maps
        other = method(model, images, target, engine=engine, **options).maps
        assert torch.allclose(other, eager, rtol=1e-4, atol=1e-5 * float(eager.abs().max())), method.__name__


def test_onnx_is_exported_once_per_model_and_image_shape(monkeypatch, one_thread):
    exports = []
    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: exports.append(1) or export(*args, **kwargs))
    model = _tiny_cnn()
    images = torch.rand(5, 3, 32, 32)
    QueryEngine(model, max_batch=2, engine="onnx").probabilities(images)
    QueryEngine(model, max_batch=3, engine="onnx").probabilities(images)
    assert len(exports) == 1
    QueryEngine(model, engine="onnx").probabilities(torch.rand(2, 3, 16, 16))
    QueryEngine(_tiny_cnn(), engine="onnx").probabilities(images)
    assert len(exports) == 3


def test_unknown_engine_and_missing_onnxruntime_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="unknown query engine 'tensorrt'"):
        QueryEngine(_tiny_cnn(), engine="tensorrt")
    with pytest.raises(ValueError, match="unknown query engine"):
        rex.ReX(engine="jit").explain(_tiny_cnn(), torch.rand(1, 3, 32, 32))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        QueryEngine(_tiny_cnn(), engine="onnx").probabilities(torch.rand(1, 3, 32, 32))


def test_onnx_engine_runs_a_torchscript_black_box(tmp_path, one_thread):
    """A TorchScript file loaded as a black box is exported through its trace and gives eager's probabilities."""
    from models.queries import BlackBoxModel

    path = tmp_path / "cnn.pt"
    torch.jit.trace(_tiny_cnn().eval(), torch.rand(2, 3, 32, 32)).save(str(path))
    box = BlackBoxModel(torch.jit.load(str(path)).eval(), 32, (4, 4))
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eager = QueryEngine(box).probabilities(images)
    onnx = QueryEngine(box, engine="onnx").probabilities(images)
    assert torch.allclose(onnx, eager, atol=1e-5) and not torch.allclose(eager, eager[:1].expand_as(eager))
