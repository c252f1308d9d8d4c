"""The stage registry, the one explainer decorator (access refusal for every method), old checkpoints, import layers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import explainers
from evaluation import discover, load_models
from models import BlackBoxModel, StageModule, available_stages, load_checkpoint, load_stage, register_stage
from models.stages import _STAGES
from salvage import ExplainerModule

FIXTURES = Path(__file__).parent / "fixtures"
discover()


def test_a_new_stage_registers_itself_and_its_checkpoints_load(tmp_path):
    @register_stage("toy_stage")
    class ToyStage(StageModule):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Linear(width, 2)

    try:
        assert "toy_stage" in available_stages() and ToyStage.stage == "toy_stage"
        module = ToyStage(width=5)
        ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
        module.on_save_checkpoint(ckpt)
        torch.save(ckpt, tmp_path / "toy.ckpt")
        loaded = load_stage(tmp_path / "toy.ckpt", expect="toy_stage")
        assert isinstance(loaded, ToyStage) and torch.equal(loaded.net.weight, module.net.weight)
        assert loaded.provides() == {"toy_stage": loaded}
        with pytest.raises(ValueError, match="is a toy_stage checkpoint, but a classifier checkpoint is needed"):
            load_checkpoint(tmp_path / "toy.ckpt", expect="classifier")
        with pytest.raises(ValueError, match="registered twice"):
            register_stage("toy_stage")(type("Other", (StageModule,), {}))
    finally:
        _STAGES.pop("toy_stage", None)


def test_unknown_stage_in_a_checkpoint_is_named(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {}, "stage": "teleporter"}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="holds no known stage \\(found 'teleporter'; known: .*classifier"):
        load_checkpoint(tmp_path / "x.ckpt")


def test_checkpoints_written_before_the_classes_moved_still_load():
    """tests/fixtures/old_*.ckpt were written by the code that kept these classes in salvage/ (class paths
    `salvage.ClassifierModule`, `salvage.ExplainerModule` in their hyperparameters)."""
    old = torch.load(FIXTURES / "old_classifier.ckpt", weights_only=True)
    assert old["hyper_parameters"]["_class_path"] == "salvage.ClassifierModule"
    classifier = load_stage(FIXTURES / "old_classifier.ckpt", expect="classifier")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert classifier(images).shape == (2, 6)
    assert torch.equal(classifier.state_dict()["model.backbone.cls_token"], old["state_dict"]["model.backbone.cls_token"])
    explainer = load_stage(FIXTURES / "old_explainer.ckpt")
    assert isinstance(explainer, ExplainerModule) and explainer(images).shape == (2, 6, 4, 4)
    loaded = load_models(FIXTURES / "old_classifier.ckpt")
    assert loaded.stage == "classifier" and loaded.img_size == 32 and set(loaded.models) == {"classifier"}


class _Linear(nn.Module):
    patch_grid = (2, 2)

    def forward(self, images):
        return images.mean((2, 3))[:, :2] * 4


@pytest.mark.parametrize("name", explainers.available())
def test_every_method_goes_through_one_decorator_that_checks_access(name):
    spec = explainers.get(name)
    assert isinstance(spec, explainers.MethodSpec) and spec.summary
    black_box = BlackBoxModel(_Linear(), img_size=8, patch_grid=(2, 2))
    images = torch.rand(1, 3, 8, 8)
    if spec.access == "black":
        spec.check_access(black_box)
        return
    with pytest.raises(ValueError, match=f"method '{name}' is a {spec.access}-box method.*black-box model"):
        spec({"classifier": black_box, **{s: nn.Identity() for s in spec.needs}}, images)


def test_every_discovered_method_is_registered_once_with_its_options():
    names = explainers.available()
    assert {"rex", "salvage", "vit_shapley", "intervention", "kernel_shap", "random"} <= set(names)
    assert explainers.get("rise").options["n_masks"] == 1000
    assert explainers.get("intervention").required == ["property"]
    with pytest.raises(ValueError, match="'intervention' needs the option\\(s\\) property"):
        explainers.get("intervention")(_Linear(), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="registered twice"):
        explainers.explainer("rex")(lambda model, images, target: None)


def test_decorator_fills_the_target_times_the_call_and_counts_model_calls():
    @explainers.explainer("toy_counting", access="black")
    def toy(model, images, target, repeats: int = 2):
        """Calls the model `repeats` times."""
        for _ in range(repeats):
            model(images)
        return explainers.Explanation(maps=images.mean(1))

    try:
        model = _Linear()
        images = torch.rand(3, 3, 8, 8)
        e = toy(model, images, repeats=3)
        assert torch.equal(e.target, model(images).argmax(1))
        assert e.model_calls == 3 and e.model_images == 9 and e.seconds >= 0
        with pytest.raises(ValueError, match="needs a explainer checkpoint, but only classifier is loaded"):
            explainers.get("salvage")({"classifier": model}, images)
    finally:
        explainers.unregister("toy_counting")
