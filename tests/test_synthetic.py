"""The synthetic ground-truth benchmark: determinism, masks, cue blending and correlation, occluders."""
import pytest
import torch

from datamodules import CLASS_SHAPES, CueConfig, SyntheticDataModule, SyntheticScenes, render_scene
from datamodules.scenes import shape_mask


def test_scenes_are_deterministic_in_seed_split_index():
    a, b = render_scene(3, "train", 17), render_scene(3, "train", 17)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], render_scene(3, "test", 17)["image"])
    assert not torch.equal(a["image"], render_scene(4, "train", 17)["image"])


def test_item_format_and_any_resolution():
    for size in (32, 64, 224):
        item = render_scene(0, "val", 5, img_size=size)
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["mask"].shape == (1, size, size) and item["mask"].dtype == torch.bool
        assert 0 <= int(item["label"]) < len(CLASS_SHAPES)


def test_target_mask_is_the_object_and_distractors_stay_off_it():
    for index in range(20):
        item = render_scene(1, "train", index, img_size=64, max_distractors=3)
        mask = item["mask"][0]
        assert 40 < mask.sum() < 64 * 64 // 3
        colours = item["image"][:, mask]
        assert colours.std(dim=1).max() < 0.1  # one solid (lightly shaded) object colour under the mask


def test_classes_are_balanced_and_colour_does_not_give_them_away():
    items = [render_scene(0, "train", i, img_size=32) for i in range(600)]
    labels = torch.stack([it["label"] for it in items])
    counts = torch.bincount(labels, minlength=len(CLASS_SHAPES))
    assert counts.min() > 60
    means = torch.stack([it["image"][:, it["mask"][0]].mean(1) for it in items])
    per_class = torch.stack([means[labels == c].mean(0) for c in range(len(CLASS_SHAPES))])
    assert (per_class - per_class.mean(0)).abs().max() < 0.1


def test_shapes_differ_from_each_other():
    masks = torch.stack([shape_mask(s, 64, 32, 32, 20, 0.0) for s in CLASS_SHAPES]).float().flatten(1)
    iou = (masks @ masks.T) / (masks.sum(1, keepdim=True) + masks.sum(1) - masks @ masks.T)
    assert (iou - torch.eye(len(CLASS_SHAPES))).max() < 0.85


def test_cue_is_a_linear_blend_and_can_be_set_per_image():
    cue = CueConfig(kind="patch", color=(1.0, 0.0, 1.0))
    base = render_scene(0, "test", 3, cue=cue, cue_strength=0.0)
    for a in (0.3, 1.0):
        item = render_scene(0, "test", 3, cue=cue, cue_strength=a)
        m = item["cue_mask"].float()
        expected = base["image"] * (1 - a * m) + a * m * torch.tensor(cue.color).view(3, 1, 1)
        assert (item["image"] - expected).abs().max() <= 1 / 255 + 1e-6
        assert float(item["cue_strength"]) == pytest.approx(a)
        assert torch.equal(item["image"][:, ~item["cue_mask"][0]], base["image"][:, ~base["cue_mask"][0]])
    assert item["cue_mask"].sum() == (64 // 8) ** 2
    assert not (item["cue_mask"] & item["mask"]).any()
    with pytest.raises(ValueError, match="cue_strength"):
        render_scene(0, "test", 3, cue=cue, cue_strength=1.5)


def test_cue_correlates_with_class_in_train_only():
    cue = CueConfig(target_class=2, p_with_class=0.9, p_without_class=0.1, p_eval=0.5)
    train = [render_scene(0, "train", i, img_size=32, cue=cue) for i in range(600)]
    on = torch.tensor([float(it["cue_strength"]) > 0 for it in train])
    lab = torch.stack([it["label"] for it in train])
    assert 0.8 < on[lab == 2].float().mean() <= 1.0 and on[lab != 2].float().mean() < 0.2
    test = [render_scene(0, "test", i, img_size=32, cue=cue) for i in range(600)]
    on = torch.tensor([float(it["cue_strength"]) > 0 for it in test])
    lab = torch.stack([it["label"] for it in test])
    assert abs(on[lab == 2].float().mean() - on[lab != 2].float().mean()) < 0.15


def test_occluders_are_black_and_never_cover_the_target():
    for index in range(20):
        item = render_scene(2, "test", index, img_size=64, occluders=3)
        occ = item["occluder_mask"][0]
        assert occ.any()
        assert not (occ & item["mask"][0]).any()
        assert item["image"][:, occ].abs().max() == 0


def test_datamodule_batches_carry_ground_truth():
    dm = SyntheticDataModule(img_size=32, batch_size=8, n_train=16, n_val=8, n_test=8, cue=CueConfig(), occluders=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "mask", "cue_mask", "cue_strength", "occluder_mask", "index"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["cue_strength"].shape == (8,)
    assert torch.equal(dm.data_train[3]["image"], dm.data_train.render(3)["image"])
    assert isinstance(dm.hparams["cue"], dict)


def test_bad_synthetic_settings_fail_clearly():
    with pytest.raises(ValueError, match="batch_size"):
        SyntheticDataModule(batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        CueConfig(kind="stripes")
    with pytest.raises(ValueError, match="p_eval"):
        CueConfig(p_eval=2.0)


def test_scenes_dataset_len_and_split():
    ds = SyntheticScenes("val", 5, img_size=32, progress=False)
    assert len(ds) == 5 and ds.split == "val"


def test_scenes_render_once_per_process_and_a_smaller_split_is_a_prefix(monkeypatch):
    calls = []
    original = SyntheticScenes.render
    monkeypatch.setattr(SyntheticScenes, "render", lambda self, i, s=None: calls.append(i) or original(self, i, s))
    big = SyntheticScenes("test", 6, img_size=24, seed=11, progress=False)
    assert calls == list(range(6))
    small = SyntheticScenes("test", 4, img_size=24, seed=11, progress=False)
    bigger = SyntheticScenes("test", 8, img_size=24, seed=11, progress=False)
    assert calls == list(range(8)), "only the scenes not rendered before are rendered"
    for i in range(4):
        assert torch.equal(small[i]["image"], big[i]["image"]) and torch.equal(bigger[i]["mask"], big[i]["mask"])
    assert torch.equal(bigger[7]["image"], (render_scene(11, "test", 7, img_size=24)["image"]))
    SyntheticScenes("test", 2, img_size=24, seed=12, progress=False)
    assert len(calls) == 10, "another seed is other scenes"


@pytest.mark.parametrize("shape", CLASS_SHAPES + ("bar", "half_disk", "l_shape"))
def test_shape_mask_window_equals_the_whole_grid_test(shape):
    """shape_mask tests only a window around the shape; the same test on every pixel of the image agrees."""
    from datamodules.scenes import _shape_window

    size = 48
    for cx, cy, scale, angle in ((24.0, 24.0, 13.0, 0.2), (3.0, 45.5, 11.0, -0.26), (40.2, 7.7, 9.5, 0.1)):
        whole = _shape_window(shape, 0, size, 0, size, cx, cy, scale, angle)
        assert torch.equal(shape_mask(shape, size, cx, cy, scale, angle), whole)
        assert whole.any()


def test_scenes_are_pinned():
    """Every committed benchmark figure depends on these exact pixels: a change to the renderer that alters any
    scene (even one rounding step in a shape's edge) must be deliberate and comes with rerun tables."""
    import hashlib

    digest = hashlib.sha256()
    for i in range(6):
        for kw in (dict(img_size=64), dict(img_size=112, occluders=2, cue=CueConfig(kind="tint"))):
            item = render_scene(0, "test", i, **kw)
            for key in sorted(item):
                value = item[key]
                value = (value * 255).round().to(torch.uint8) if value.is_floating_point() else value
                digest.update(key.encode())
                digest.update(value.numpy().tobytes())
    assert digest.hexdigest() == "a10b6fdf032370fe1e5dcae8f0c5bc55668dcb55cd4c1507a1734ef197791d3b"
