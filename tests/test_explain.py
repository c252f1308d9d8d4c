"""explain.py end to end: image files and a datamodule split on a tiny trained checkpoint, refusals, interventions."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import explain
import train
import explainers
from evaluation import load_image
from tests.conftest import tiny_stage_args

SMALL = ["--option", "rex.n_partitions=2", "--option", "rex.preset=fast", "--option", "rise.n_masks=32",
         "--steps", "8"]
DATA = ["--data", "classifier_synthetic", "--limit", "4", "--data-arg", "img_size=32", "--data-arg", "n_test=6",
        "--data-arg", "occluders=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explain")


@pytest.fixture(scope="module")
def ckpt(root) -> str:
    return train.main(tiny_stage_args(root, "cls"))[0]["best_checkpoint"]


@pytest.fixture
def image_files(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray((rng.random((40, 28)) * 255).astype(np.uint8), "L").save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray((rng.random((32, 32, 4)) * 255).astype(np.uint8), "RGBA").save(rgba)
    return [str(grey), str(rgba)]


def test_a_photo_of_another_shape_is_resized_and_centre_cropped_not_squashed(tmp_path):
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, :40, 0] = wide[:, 40:80, 1] = wide[:, 80:, 2] = 255  # red | green | blue thirds
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 32, crop_pct=1.0)
    assert image.shape == (3, 32, 32)
    assert image[1].mean() > 0.95 and image[0].max() < 0.05 and image[2].max() < 0.05  # only the green middle


def _finite(value) -> bool:
    """Every number finite, except the size, IN and OUT of a degenerate record (NaN by design)."""
    if isinstance(value, dict) and value.get("degenerate"):
        value = {**value, "metrics": {k: v for k, v in value["metrics"].items() if k not in ("size", "in", "out")}}
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return not isinstance(value, float) or math.isfinite(value)


def test_explain_image_files_writes_pictures_maps_and_summary(ckpt, image_files, tmp_path, capsys):
    out = tmp_path / "out"
    records = explain.main(["--ckpt", ckpt, "--method", "rex,occlusion", "--images", *image_files, "--out", str(out),
                            *SMALL])
    notes = capsys.readouterr().out
    assert ("grey.png: converted (mode L -> RGB; 28x40: shorter side resized to 37 px, centre 32x32 crop, as the "
            "model's evaluation transform)") in notes
    assert "rgba.png: converted (mode RGBA -> RGB)" in notes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "classifier" and len(summary["records"]) == 4 == len(records)
    assert not (out / "comparison.md").exists()
    for rec in summary["records"]:
        assert {"image", "method", "predicted", "target", "confidence", "seconds", "model_calls", "metrics"} <= set(rec)
        own = {"mutants_evaluated", "mutants_cached", "mutants_inferred", "partitions", "extraction_evaluations",
               "model_evaluations"} if rec["method"] == "rex" else set()  # ReX's own counts
        assert set(rec["metrics"]) == {"size", "insertion", "deletion", "blank_probability"} | own
        assert not own or rec["metrics"]["mutants_evaluated"] > 0 <= rec["metrics"]["mutants_cached"]
        assert isinstance(rec["degenerate"], bool) and 0 <= rec["metrics"]["blank_probability"] <= 1
        size = rec["metrics"]["size"]
        assert (size is None) if rec["degenerate"] else (0 < size <= 1)
        assert 0 <= rec["confidence"] <= 1 and _finite(rec)
        assert rec["target"] == rec["predicted"]
        png, npz = out / rec["files"]["overlay"], out / rec["files"]["npz"]
        assert png.stat().st_size > 1000
        arrays = np.load(npz)
        assert arrays["map"].shape == (32, 32) and np.isfinite(arrays["map"]).all()
        assert arrays["explanation"].dtype == bool
        if not rec["degenerate"]:
            assert arrays["explanation"].mean() == pytest.approx(rec["metrics"]["size"])
    rex_calls = [r["model_calls"] for r in summary["records"] if r["method"] == "rex"]
    assert all(c > 1 for c in rex_calls)


def test_explain_data_split_compares_methods_with_ground_truth_metrics(ckpt, tmp_path):
    out = tmp_path / "out"
    explain.main(["--ckpt", ckpt, "--method", "random,saliency,rise", *DATA, "--out", str(out), "--target", "2",
                  "--batch-size", "3", *SMALL])
    summary = json.loads((out / "summary.json").read_text())
    records = summary["records"]
    assert len(records) == 12 and len({r["image"] for r in records}) == 4
    for rec in records:
        assert rec["target"] == 2 and "label" in rec and _finite(rec)
        assert {"size", "insertion", "deletion", "in", "out", "rra", "rma"} <= set(rec["metrics"])
        defined = ("rra", "rma") if rec["degenerate"] else ("in", "out", "rra", "rma")  # degenerate: size/IN/OUT null
        assert all(0 <= rec["metrics"][k] <= 1 for k in defined)
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| method | images | degenerate | size | insertion | deletion | in | out | rra | rma |")
    assert [row.split("|")[1].strip() for row in table[2:5]] == ["random", "rise", "saliency"]
    random_rows = [r for r in records if r["method"] == "random"]
    assert table[2].split("|")[3].strip() == str(sum(r["degenerate"] for r in random_rows))
    sizes = [r["metrics"]["size"] for r in random_rows if not r["degenerate"]]
    if sizes:
        se = f" ± {np.std(sizes, ddof=1) / np.sqrt(len(sizes)):.3f}" if len(sizes) > 1 else ""
        assert f"{np.mean(sizes):.3f}{se}" in table[2]


def test_explain_intervention_on_a_split(ckpt, tmp_path):
    out = tmp_path / "out"
    records = explain.main(["--ckpt", ckpt, "--method", "intervention", "--property", "object_fade", *DATA[:2],
                            "--limit", "2", *DATA[4:], "--out", str(out), "--option", "intervention.num_steps=10",
                            "--option", "intervention.num_permutations=50"])
    assert len(records) == 2
    for rec in records:
        assert set(rec["metrics"]) == {"S", "p", "flips"} and 0 <= rec["metrics"]["p"] <= 1
        assert (out / rec["files"]["overlay"]).is_file()
        assert np.load(out / rec["files"]["npz"])["curve"].shape == (10,)


def test_intervention_on_your_own_images_globally_and_in_a_region(ckpt, image_files, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "region.png")
    common = ["--ckpt", ckpt, "--images", *image_files, "--method", "intervention", "--option",
              "intervention.num_steps=8", "--option", "intervention.num_permutations=20"]
    whole = explain.main([*common, "--property", "brightness", "--out", str(tmp_path / "a")])
    inside = explain.main([*common, "--property", "brightness", "--region", str(tmp_path / "region.png"),
                           "--out", str(tmp_path / "b")])
    assert len(whole) == len(inside) == 2 and all(set(r["metrics"]) == {"S", "p", "flips"} for r in whole + inside)
    strip = np.load(tmp_path / "b" / inside[0]["files"]["npz"])
    assert strip["curve"].shape == (8,)
    Image.fromarray(np.zeros((20, 20), np.uint8) + 255).save(tmp_path / "small.png")
    with pytest.raises(SystemExit, match="region mask file .*small.png.* is 20x20 .* but the images are 32x32"):
        explain.main([*common, "--property", "contrast", "--region", str(tmp_path / "small.png"),
                      "--out", str(tmp_path / "c")])


def test_explain_refuses_with_clear_messages(ckpt, image_files, tmp_path):
    base = ["--ckpt", ckpt, "--images", *image_files, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="unknown method 'nope'; available: .*gradcam.*rex"):
        explain.main([*base, "--method", "nope"])
    with pytest.raises(SystemExit, match="intervention needs --property"):
        explain.main([*base, "--method", "intervention"])
    with pytest.raises(SystemExit, match="property 'object_fade' needs .*--data"):
        explain.main([*base, "--method", "intervention", "--property", "object_fade"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit, match="cannot read image .*broken.png"):
        explain.main(["--ckpt", ckpt, "--images", str(bad), "--method", "random"])


def test_explain_refuses_a_method_that_needs_another_stage(ckpt, image_files, tmp_path):
    @explainers.explainer("needs_explainer", needs=("explainer",))
    def needs_explainer(model, images, target, explainer):
        """A method that needs an explainer checkpoint."""
        return explainers.Explanation(maps=images[:, 0])

    try:
        with pytest.raises(SystemExit, match="'needs_explainer' needs a explainer checkpoint, but --ckpt is a classifier"):
            explain.main(["--ckpt", ckpt, "--images", *image_files, "--method", "needs_explainer"])
    finally:
        explainers.unregister("needs_explainer")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_explain_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "stage": "classifier", "x": _Payload()}, evil)
    with pytest.raises(SystemExit, match="refusing to load .*pickled code"):
        explain.main(["--ckpt", str(evil), "--method", "random", "--images", "x.png"])
    assert not marker.exists()


def test_torchscript_model_is_a_black_box(ckpt, image_files, tmp_path):
    from models import load_stage

    net = load_stage(ckpt).model.eval()
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 32, 32)), scripted)
    base = ["--ckpt", str(scripted), "--img-size", "32", "--grid", "4", "--images", *image_files, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="'gradcam' is a white-box method.*black-box model.*Methods this model "
                                         "supports: .*occlusion"):
        explain.main([*base, "--method", "gradcam"])
    records = explain.main([*base, "--method", "occlusion", "--steps", "4"])
    direct = explain.main(["--ckpt", ckpt, "--images", *image_files, "--out", str(tmp_path / "d"),
                           "--method", "occlusion", "--steps", "4"])
    assert [r["predicted"] for r in records] == [r["predicted"] for r in direct]
    for a, b in zip(records, direct):
        assert a["degenerate"] == b["degenerate"]
        assert a["metrics"]["size"] == pytest.approx(b["metrics"]["size"], nan_ok=True)
    assert Path(tmp_path / "o" / "summary.json").is_file()


def test_explainer_checkpoint_runs_salvage_with_surrogate_metrics(root, ckpt, tmp_path):
    quick = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0"]
    sur = train.main(tiny_stage_args(root, "sur", "surrogate_synthetic", "--model.init_args.classifier_ckpt", ckpt,
                                     *quick))[0]["last_checkpoint"]
    expl = train.main(tiny_stage_args(
        root, "expl", "salvage_synthetic", "--model.init_args.surrogate_ckpt", sur, *quick,
        "--model.init_args.masks_per_image", "4", "--model.init_args.test_r_masks", "2"))[0]["last_checkpoint"]
    out = tmp_path / "out"
    records = explain.main(["--ckpt", expl, "--method", "salvage,random", *DATA[:2], "--limit", "2", *DATA[4:],
                            "--out", str(out), "--steps", "4", "--srg-masks", "4"])
    assert {r["method"] for r in records} == {"salvage", "random"}
    for rec in records:
        rma = rec["metrics"]["rma"]  # undefined (NaN) for a map without positive relevance, e.g. an untrained explainer
        assert math.isnan(rma) or 0 <= rma <= 1
        rest = {**rec, "metrics": {k: v for k, v in rec["metrics"].items() if k != "rma"}}
        assert {"srg", "r_srg", "rra", "rma", "in", "size"} <= set(rec["metrics"]) and _finite(rest)
        assert -1 <= rec["metrics"]["srg"] <= 1
    assert (out / "comparison.md").read_text().count("| salvage |") == 1
    with pytest.raises(SystemExit, match="'salvage' needs a explainer checkpoint, but --ckpt is a surrogate"):
        explain.main(["--ckpt", sur, "--method", "salvage", *DATA, "--out", str(tmp_path)])


def test_a_toy_method_registered_here_runs_end_to_end(ckpt, tmp_path):
    """README "Adding a method": one decorator in any file, and explain.py, the metrics and the table pick it up."""

    @explainers.explainer("toy_brightness", access="black")
    def toy_brightness(model, images, target, power: float = 1.0):
        """Brightness to a power: a pixel map (B, H, W)."""
        return explainers.Explanation(maps=images.mean(1) ** power)

    out = tmp_path / "out"
    try:
        with pytest.raises(SystemExit, match="unknown option.*'toy_brightness'.*power=1.0"):
            explain.main(["--ckpt", ckpt, "--method", "toy_brightness", *DATA, "--out", str(out),
                          "--option", "toy_brightness.gamma=2"])
        records = explain.main(["--ckpt", ckpt, "--method", "toy_brightness,random", *DATA, "--out", str(out),
                                "--option", "toy_brightness.power=2", "--steps", "4", *SMALL[4:6]])
    finally:
        explainers.unregister("toy_brightness")
    toy = [r for r in records if r["method"] == "toy_brightness"]
    assert len(toy) == 4 and all({"size", "insertion", "deletion", "in", "rra", "rma"} <= set(r["metrics"]) for r in toy)
    arrays = np.load(out / toy[0]["files"]["npz"])
    assert arrays["map"].shape == (32, 32) and (arrays["map"] >= 0).all()
    assert (out / toy[0]["files"]["overlay"]).stat().st_size > 1000
    rows = [line.split("|")[1].strip() for line in (out / "comparison.md").read_text().splitlines()[2:4]]
    assert rows == ["random", "toy_brightness"]


def test_explain_rcsb_with_a_bridge_checkpoint(ckpt, tmp_path):
    """`--method rcsb --target B --region truth --bridge PATH`: one four-panel PNG, the counterfactual in the npz, and a
    record with the target probability, flip and the change outside the region (0)."""
    from rcsb import BridgeModule

    torch.manual_seed(0)
    bridge = BridgeModule(network={"preset": "tiny", "model_channels": 32, "channel_mult": [1, 2]}, image_size=32)
    state = {"state_dict": bridge.state_dict(), "hyper_parameters": dict(bridge.hparams)}
    bridge.on_save_checkpoint(state)
    torch.save(state, tmp_path / "bridge.ckpt")
    base = ["--ckpt", ckpt, *DATA[:2], "--limit", "2", *DATA[4:], "--out", str(tmp_path / "out"), "--method", "rcsb"]
    with pytest.raises(SystemExit, match="needs a bridge checkpoint, but --ckpt is a classifier checkpoint; give one "
                                         "with --bridge PATH"):
        explain.main(base)
    with pytest.raises(SystemExit, match="is a classifier checkpoint, but a bridge checkpoint is needed"):
        explain.main([*base, "--bridge", ckpt])
    with pytest.raises(SystemExit, match="is a bridge checkpoint, which holds no classifier.* as --bridge PATH"):
        explain.main(["--ckpt", str(tmp_path / "bridge.ckpt"), *base[2:]])
    records = explain.main([*base, "--bridge", str(tmp_path / "bridge.ckpt"), "--target", "1", "--region", "truth",
                            "--option", "rcsb.nfe=2", "--option", "rcsb.start=200"])
    assert len(records) == 2
    for rec in records:
        assert rec["target"] == 1 and rec["metrics"]["change_outside"] == 0.0 and "flipped" in rec
        assert 0 <= rec["metrics"]["target_probability"] <= 1
        arrays = np.load(tmp_path / "out" / rec["files"]["npz"])
        assert arrays["counterfactual"].shape == (3, 32, 32) and arrays["region"].dtype == bool
        assert (tmp_path / "out" / rec["files"]["overlay"]).stat().st_size > 1000
