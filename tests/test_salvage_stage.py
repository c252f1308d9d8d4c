"""The explainer stage end to end on tiny settings: train.py, checkpoint without the surrogate, registry, metrics logged."""
import json

import pytest
import torch

import train
from explainers import get
from models import load_stage
from salvage import ExplainerModule
from tests.conftest import tiny_stage_args

TINY = ["--model.init_args.masks_per_image", "4", "--model.init_args.val_r_masks", "2",
        "--model.init_args.test_r_masks", "2", "--model.init_args.lr", "1e-3", "--model.init_args.warmup_steps", "0"]


@pytest.fixture(scope="module")
def surrogate_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("salvage")
    cls = train.main(tiny_stage_args(tmp, "cls"))[0]
    sur = train.main(tiny_stage_args(tmp, "sur", "surrogate_synthetic", "--model.init_args.classifier_ckpt",
                                     cls["best_checkpoint"]))[0]
    return sur["best_checkpoint"]


@pytest.fixture(scope="module")
def explainer_run(surrogate_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explainer")
    args = tiny_stage_args(tmp, "expl", "salvage_synthetic", "--model.init_args.surrogate_ckpt", surrogate_ckpt, *TINY)
    return train.main(args)[0]


def test_stage_trains_and_logs_all_metrics(explainer_run):
    assert explainer_run["stage"] == "explainer"
    test = explainer_run["test"]
    for name in ("mif", "lif", "r_mif", "r_lif", "rma", "rra", "explainer_acc", "classifier_acc", "agreement"):
        assert 0.0 <= test[f"test/{name}"] <= 1.0, name
    assert test["test/srg"] == pytest.approx(test["test/mif"] - test["test/lif"], abs=1e-5)
    assert test["test/r_srg"] == pytest.approx(test["test/r_mif"] - test["test/r_lif"], abs=1e-5)
    metrics = (train.Path(explainer_run["run_dir"]) / "metrics.csv").read_text()
    assert "val/srg" in metrics and "val/r_srg" in metrics
    assert json.loads((train.Path(explainer_run["run_dir"]) / "results.json").read_text())["stage"] == "explainer"


def test_checkpoint_rebuilds_without_the_surrogate_and_keeps_it_out(explainer_run, surrogate_ckpt, tmp_path):
    ckpt = torch.load(explainer_run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["stage"] == "explainer"
    assert not any(k.startswith(("game", "reference")) for k in ckpt["state_dict"])
    moved = tmp_path / "explainer.ckpt"
    ckpt["hyper_parameters"]["surrogate_ckpt"] = str(tmp_path / "gone.ckpt")
    torch.save(ckpt, moved)
    model = load_stage(moved, expect="explainer").eval()
    assert isinstance(model, ExplainerModule) and model.game is None
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        maps = model(images)  # per-class phi
    assert maps.shape == (3, 6, 4, 4) and torch.isfinite(maps).all()
    target = torch.tensor([0, 3, 5])
    e = get("salvage").fn(None, images, target, explainer=model)
    assert torch.equal(e.maps, maps[torch.arange(3), target])
    sets = model._sets(images).detach()
    raw = (sets[:, 0] - sets[:, 1]).view(3, 6, 4, 4)
    assert maps.sum(1).abs().max() < 1e-5, "phi is centred over classes"
    assert torch.allclose(maps, raw - raw.mean(1, keepdim=True), atol=1e-6)
    probs = model.class_probabilities(images)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="loss=mse"):
        get("vit_shapley").fn(None, images, target, explainer=model)


def test_encoder_starts_from_the_surrogate_backbone(surrogate_ckpt):
    model = ExplainerModule(surrogate_ckpt=surrogate_ckpt)
    model.setup("fit")
    surrogate = load_stage(surrogate_ckpt).model
    block = "backbone.blocks.1.mlp.fc2.weight"
    assert torch.equal(model.net.encoder.state_dict()[block], surrogate.state_dict()[block])
    assert get("salvage").needs == ("explainer",) and get("salvage").access == "white"


def test_vit_shapley_variant_takes_a_step_with_one_surrogate_call_for_all_masks(surrogate_ckpt):
    model = ExplainerModule(surrogate_ckpt=surrogate_ckpt, loss="mse", sampler="guided", masks_per_image=4)
    model.setup("fit")
    calls = []
    game = model.game
    model.game.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    images = torch.rand(2, 3, 32, 32)
    loss = model.training_step({"image": images, "label": torch.tensor([0, 1])}, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.net.decoder.cls_emb.grad is not None
    assert calls[-1] == 2 * (4 + 2)  # all masks of the batch, plus v(N) and v(empty), in one surrogate call
    with torch.no_grad():
        maps = model(images)
    full = game(images).softmax(-1) - game(images, torch.zeros(2, 16, dtype=torch.bool)).softmax(-1)
    assert torch.allclose(maps.flatten(2).sum(-1), full, atol=1e-5)  # efficiency after normalisation
    e = get("vit_shapley")({"classifier": game, "explainer": model}, images, torch.tensor([1, 4]))
    assert torch.equal(e.maps, maps[torch.arange(2), torch.tensor([1, 4])])
    with pytest.raises(ValueError, match="needs phi\\+ of the JS loss"):
        model.class_probabilities(images)


def test_wrong_settings_fail_early(surrogate_ckpt):
    with pytest.raises(ValueError, match="loss must be one of"):
        ExplainerModule(surrogate_ckpt=surrogate_ckpt, loss="kl")
    with pytest.raises(ValueError, match="even for the guided sampler"):
        ExplainerModule(surrogate_ckpt=surrogate_ckpt, masks_per_image=3)
    with pytest.raises(ValueError, match="2-class surrogate"):
        ExplainerModule(surrogate_ckpt=surrogate_ckpt, binary=True)
    with pytest.raises(ValueError, match="needs --model.surrogate_ckpt"):
        ExplainerModule()
