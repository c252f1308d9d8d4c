"""RCSB bridge stage (rcsb.stage) and the "rcsb" method (rcsb.method): training lowers the loss, EMA checkpoints
round-trip through load_stage, wrong-stage and wrong-target errors, and the method's region and scores."""
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

import explainers.baselines  # noqa: F401  (registers "occlusion", used by region="auto:occlusion")
from datamodules.synthetic import SyntheticScenes
from explainers.protocol import get
from models.stages import load_checkpoint, load_stage
from explainers.regions import box_region
from rcsb import BridgeModule, rcsb_explain, rcsb_sample, training_masks

SIZE = 16
STEPS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def _eval_loss(module: BridgeModule, images: torch.Tensor) -> float:
    """The raw network's inpainting loss on fixed masks, steps and noise."""
    g = torch.Generator().manual_seed(123)
    masks = training_masks(images.shape[0], SIZE, g)
    steps = torch.linspace(50, 950, images.shape[0]).long()
    with torch.no_grad():
        return float(module.loss(images, masks, steps, generator=g))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny bridge trained for 20 steps on 16 px synthetic scenes (a few seconds), and its checkpoint."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    scenes = SyntheticScenes("train", 80, img_size=SIZE, progress=False)
    loader = DataLoader(scenes, batch_size=4, shuffle=True)
    val = DataLoader(SyntheticScenes("val", 16, img_size=SIZE, progress=False), batch_size=16)
    module = BridgeModule(network="tiny", image_size=SIZE, lr=2e-3, val_samples=2, nfe=3)
    images = next(iter(val))["image"]
    loss_before = _eval_loss(module, images)
    trainer = L.Trainer(
        max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=10,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, loader, val)
    path = tmp_path_factory.mktemp("bridge") / "bridge.ckpt"
    trainer.save_checkpoint(path)
    torch.set_num_threads(before)
    return {"module": module, "trainer": trainer, "path": path, "images": images, "loss_before": loss_before,
            "loss_after": _eval_loss(module, images), "val": val}


def test_a_few_training_steps_lower_the_loss(trained):
    assert trained["loss_after"] < 0.7 * trained["loss_before"], (trained["loss_before"], trained["loss_after"])
    metrics = trained["trainer"].callback_metrics
    assert "val/loss" in metrics and torch.isfinite(metrics["val/loss"])
    assert int(trained["module"].ema_updates) == STEPS


def test_the_bridge_steps_with_fused_adamw_except_under_fp16(trained):
    assert trained["trainer"].optimizers[0].defaults["fused"] is True  # CPU at 32-true: one kernel for all tensors
    module = BridgeModule(network="tiny", image_size=SIZE)
    module._trainer = SimpleNamespace(precision="16-mixed")  # GradScaler's unscaling would clash with clipping
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is False


def test_ema_weights_move_slowly_towards_the_trained_ones(trained):
    module = trained["module"]
    fresh = BridgeModule(network="tiny", image_size=SIZE)
    name = "out.2.weight"  # zero at initialisation
    net, ema = dict(module.net.named_parameters())[name], dict(module.ema.named_parameters())[name]
    assert not torch.equal(ema, net) and not torch.equal(ema, dict(fresh.ema.named_parameters())[name])
    assert all(not p.requires_grad for p in module.ema.parameters())
    assert module.denoiser() is module.ema and not module.ema.training


def test_checkpoint_reloads_with_identical_ema_weights(trained):
    module = trained["module"]
    loaded = load_stage(trained["path"], expect="bridge")
    assert isinstance(loaded, BridgeModule) and loaded.stage == "bridge"
    assert loaded.provides() == {"bridge": loaded}
    own, back = module.ema.state_dict(), loaded.denoiser().state_dict()
    assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
    assert all(torch.equal(a, b) for a, b in zip(module.net.parameters(), loaded.net.parameters()))
    assert int(loaded.ema_updates) == STEPS


def test_bridge_checkpoint_where_a_classifier_is_expected_is_refused(trained):
    with pytest.raises(ValueError, match="is a bridge checkpoint, but a classifier checkpoint is needed here"):
        load_checkpoint(trained["path"], expect="classifier")


def test_non_finite_loss_stops_with_advice():
    module = BridgeModule(network="tiny", image_size=SIZE)
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        module.check_finite(torch.tensor(float("nan")))


def test_training_draws_its_masks_from_the_bank():
    module = BridgeModule(network="tiny", image_size=SIZE, mask_bank=8)
    module.on_fit_start()
    assert module._bank.shape == (8, 1, SIZE, SIZE)
    masks = module._training_masks(torch.zeros(32, 3, SIZE, SIZE), torch.Generator().manual_seed(0))
    assert all(any(torch.equal(m, b) for b in module._bank) for m in masks)
    with pytest.raises(ValueError, match="mask_bank"):
        BridgeModule(network="tiny", image_size=SIZE, mask_bank=-1)


def test_bad_stage_arguments():
    with pytest.raises(ValueError, match="lr_step"):
        BridgeModule(network="tiny", image_size=SIZE, lr_step=0)
    with pytest.raises(ValueError, match="lr_gamma"):
        BridgeModule(network="tiny", image_size=SIZE, lr_gamma=1.5)
    with pytest.raises(ValueError, match="preset"):
        BridgeModule(network="huge", image_size=SIZE)
    with pytest.raises(ValueError, match="divisible"):
        BridgeModule(network="tiny", image_size=18)
    with pytest.raises(ValueError, match="mask families"):
        BridgeModule(network="tiny", image_size=SIZE, mask_families=("blobs",))


def test_validation_samples_go_to_wandb_only(trained):
    module, trainer, images = trained["module"], trained["trainer"], trained["images"]
    calls = []
    fake = WandbLogger.__new__(WandbLogger)  # isinstance passes; nothing is sent anywhere
    fake.log_image = lambda key, images, **kw: calls.append((key, images, kw))
    saved = trainer.loggers
    try:
        module._log_samples(images)  # logger=False: nothing logged
        assert calls == []
        trainer.loggers = [fake]
        module._log_samples(images)
    finally:
        trainer.loggers = saved
    (key, logged, kw), = calls
    assert key == "val/inpainting" and len(logged) == 2 and logged[0].shape == (SIZE, 3 * SIZE, 3)
    assert len(kw["caption"]) == 2
    # uint8 in [0, 255] (wandb casts float arrays without rescaling them: a [0, 1] image would be logged black); the
    # left third is the original image
    assert logged[0].dtype == np.uint8
    original = (images[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(logged[0][:, :SIZE], original) and original.max() > 100


def test_plain_inpainting_keeps_the_known_pixels(trained):
    module, images = trained["module"], trained["images"][:4]
    masks = training_masks(4, SIZE, torch.Generator().manual_seed(0))
    x1, out = module.inpaint(images, masks, nfe=3, generator=torch.Generator().manual_seed(0))
    known = ~masks.expand_as(images)
    torch.testing.assert_close(out[known], images[known])
    torch.testing.assert_close(x1[known], images[known])


# --------------------------------------------------------------------------- the "rcsb" method


def _classifier(num_classes: int = 6) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ).eval()


@pytest.fixture(scope="module")
def batch(trained):
    return next(iter(DataLoader(SyntheticScenes("test", 2, img_size=SIZE, progress=False), batch_size=2)))


def _run(trained, batch, target=1, **options):
    models = {"classifier": _classifier(), "bridge": trained["module"].eval()}
    options = {"nfe": 2, "start": 200, **options}
    return get("rcsb")(models, batch["image"], target, batch=batch, **options)


def test_rcsb_method_truth_region_and_scores(trained, batch):
    out = _run(trained, batch, region="truth")
    images, region = batch["image"], batch["mask"]
    assert torch.equal(out.region, region) and out.counterfactual.shape == images.shape
    outside = ~region.expand_as(images)
    assert torch.equal(out.counterfactual[outside], images[outside])
    assert set(out.scores) == {"target_probability", "original_probability", "flipped", "l1_inside", "l2_inside",
                               "change_outside"}
    assert all(v.shape == (2,) for v in out.scores.values())
    assert out.scores["flipped"].dtype == torch.bool and torch.equal(out.target, torch.tensor([1, 1]))
    assert torch.equal(out.scores["change_outside"], torch.zeros(2))
    assert bool((out.scores["l1_inside"] > 0).all()) and bool((out.scores["l2_inside"] >= out.scores["l1_inside"]).all())
    assert out.model_calls > 0 and out.seconds > 0


def test_rcsb_method_auto_region_from_an_attribution_method(trained, batch):
    out = _run(trained, batch, region="auto:occlusion", area=0.25)
    assert out.region.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(out.region.float().mean((1, 2, 3)), torch.full((2,), 0.25))  # 4 of 16 cells of 4 x 4 px
    assert torch.equal(out.scores["change_outside"], torch.zeros(2))


def test_rcsb_method_mask_file_region(trained, batch, tmp_path):
    arr = np.zeros((SIZE, SIZE), dtype=np.uint8)
    arr[2:8, 4:12] = 1
    Image.fromarray(arr).save(tmp_path / "region.png")
    out = _run(trained, batch, region=str(tmp_path / "region.png"))
    assert int(out.region[0].sum()) == 48 and torch.equal(out.region[0], out.region[1])
    Image.fromarray(np.ones((8, 8), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="8x8 .* images are 16x16"):
        _run(trained, batch, region=str(tmp_path / "small.png"))


def test_rcsb_method_refuses_a_target_out_of_range_and_bad_regions(trained, batch):
    with pytest.raises(ValueError, match="target class 6 is out of range: the classifier has 6 classes"):
        _run(trained, batch, target=6)
    with pytest.raises(ValueError, match="out of range"):
        _run(trained, batch, target=-1)
    with pytest.raises(ValueError, match="neither"):
        _run(trained, batch, region="nowhere.png")
    with pytest.raises(ValueError, match="ground-truth"):
        get("rcsb")({"classifier": _classifier(), "bridge": trained["module"]}, batch["image"], 1, region="truth",
                    nfe=2, start=200)
    with pytest.raises(ValueError, match="trained on 16x16"):
        _run(trained, {"image": torch.rand(1, 3, 32, 32)}, region="auto:occlusion")
    with pytest.raises(ValueError, match="needs a classifier and a bridge|needs a bridge"):
        get("rcsb")({"classifier": _classifier()}, batch["image"], 1)
    assert get("rcsb").fn is rcsb_explain.fn and get("rcsb").access == "white"


def test_rcsb_sampler_details_are_options_with_the_project_defaults(trained, batch):
    options = get("rcsb").options
    assert options["start"] == 650 and options["clf_input"] == "affine"  # the authors: start 700, clf_input minmax
    authors = _run(trained, batch, region="truth", clf_input="minmax", start=210)
    ours = _run(trained, batch, region="truth")
    assert not torch.allclose(authors.counterfactual, ours.counterfactual)

    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("a bad option is refused before the classifier runs")

    with pytest.raises(ValueError, match="clf_input must be one of affine, minmax"):
        get("rcsb")({"classifier": Refuses(), "bridge": trained["module"]}, batch["image"], 1, region="truth",
                    batch=batch, clf_input="01")


def test_raw_and_ema_weights_load_their_own_tensors_and_give_different_counterfactuals(trained, batch):
    state = load_checkpoint(trained["path"])["state_dict"]
    loaded = load_stage(trained["path"], expect="bridge").eval()
    for ema, prefix in ((True, "ema."), (False, "net.")):
        own = loaded.denoiser(ema=ema).state_dict()
        assert own.keys() == {k[len(prefix):] for k in state if k.startswith(prefix)}
        assert all(torch.equal(v, state[prefix + k]) for k, v in own.items()), prefix
    assert loaded.denoiser() is loaded.ema and loaded.denoiser(ema=False) is loaded.net
    assert not torch.equal(state["ema.out.2.weight"], state["net.out.2.weight"])

    models = {"classifier": _classifier(), "bridge": loaded}
    options = dict(region="truth", nfe=2, start=200, batch=batch)
    ema = get("rcsb")(models, batch["image"], 1, **options)
    raw = get("rcsb")(models, batch["image"], 1, bridge_weights="raw", **options)
    assert get("rcsb").options["bridge_weights"] == "ema"
    assert not torch.allclose(ema.counterfactual, raw.counterfactual)
    with torch.enable_grad():
        by_hand = rcsb_sample(loaded.net, loaded.schedule, models["classifier"], batch["image"], batch["mask"], 1,
                              nfe=2, start=200, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(raw.counterfactual, by_hand)
    with pytest.raises(ValueError, match="bridge_weights must be one of ema, raw"):
        get("rcsb")(models, batch["image"], 1, bridge_weights="last", **options)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_learning_rate_decays_as_i2sb_steplr_per_optimiser_step(accumulate):
    lr, step_size, gamma, n = 1e-3, 3, 0.5, 7
    module = BridgeModule(network="tiny", image_size=SIZE, lr=lr, lr_step=step_size, lr_gamma=gamma, val_samples=0)
    loader = DataLoader(SyntheticScenes("train", 8, img_size=SIZE, progress=False), batch_size=2)
    trainer = L.Trainer(max_steps=n, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        accumulate_grad_batches=accumulate)
    trainer.fit(module, loader)
    assert trainer.global_step == n
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr * gamma ** (n // step_size), rel=1e-12)


@pytest.mark.parametrize("gamma", [0.99, 1.0])
def test_i2sb_s_default_schedule_over_thousands_of_steps(gamma):
    module = BridgeModule(network="tiny", image_size=SIZE, lr_gamma=gamma)
    assert module.hparams.lr_step == 1000 and module.hparams.lr == 5e-5
    module._trainer = SimpleNamespace(precision="32-true")
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and config["lr_scheduler"]["frequency"] == 1
    for n in range(1, 2501):
        optimizer.step()
        scheduler.step()
        if n in (999, 1000, 1999, 2000, 2500):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-5 * gamma ** (n // 1000), rel=1e-12), n


def test_rcsb_method_box_regions_give_the_object_room(trained, batch):
    out = _run(trained, batch, region="box:2")
    assert torch.equal(out.region, box_region(batch["mask"], 2))
    assert bool((out.region | ~batch["mask"]).all()) and out.region.sum() > batch["mask"].sum()
    outside = ~out.region.expand_as(batch["image"])
    assert torch.equal(out.counterfactual[outside], batch["image"][outside])
    assert torch.equal(_run(trained, batch, region="box:0.25").region, box_region(batch["mask"], 0.25))

    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("a bad region spec is refused before the classifier runs")

    with pytest.raises(ValueError, match="margin"):
        get("rcsb")({"classifier": Refuses(), "bridge": trained["module"]}, batch["image"], 1, region="box:big",
                    batch=batch)
