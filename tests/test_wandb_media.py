"""Pictures logged to W&B are the pictures: read back from an offline run's media files."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from explainers.figures import image_to_array
from salvage.explainer import ExplainerModule


def test_image_to_array_is_rgb_uint8_in_0_255():
    image = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 4)
    out = image_to_array(image)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == [0, 128, 255]


def test_salvage_attribution_overlays_reach_wandb_with_their_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="media-test", save_dir=str(tmp_path), offline=True)
    images = torch.full((2, 3, 8, 8), 0.5)
    images[1, 1] = 0.9  # a green-ish second image
    maps = torch.zeros(2, 3, 2, 2)  # (B, classes, gh, gw): class 1 has one strongly positive patch
    maps[:, 1, 0, 0] = 1.0
    target = torch.tensor([1, 1])
    module = SimpleNamespace(logger=logger, hparams=SimpleNamespace(log_examples=2),
                             trainer=SimpleNamespace(datamodule=None))
    ExplainerModule._log_overlays(module, images, maps, target)
    logger.experiment.finish()
    files = sorted(Path(tmp_path).glob("wandb/offline-run-*/files/media/images/test/attributions_*.png"))
    assert len(files) == 2
    logged = [np.asarray(Image.open(f).convert("RGB")).astype(int) for f in files]
    expected = [image_to_array(images[i]).astype(int) for i in range(2)]
    for got in logged:
        assert got.shape == (8, 8, 3) and got.max() > 100  # not black
    # away from the positive patch the overlay is the image itself; on it, red is raised
    assert any(np.abs(got[6:, 6:] - exp[6:, 6:]).max() <= 1 for got in logged for exp in expected)
    assert all(got[0, 0, 0] > got[7, 7, 0] for got in logged)


def test_rex_callback_logs_one_table_with_each_images_pictures_and_metrics(tmp_path, monkeypatch):
    import json

    from rex import ReXCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))  # where a table's pictures are staged offline
    logger = WandbLogger(project="media-test", save_dir=str(tmp_path), offline=True)

    class Corner(torch.nn.Module):
        """Class 1 iff the top-left quarter is bright; the blank image is class 0."""

        def forward(self, x):
            on = x[:, :, :8, :8].mean((1, 2, 3)) > 0.5
            return torch.stack([(~on).float(), on.float()], 1) * 4

    images = torch.full((2, 3, 16, 16), 0.2)
    images[1] = 0.1  # two different rows
    images[:, :, :8, :8] = 0.9
    cb = ReXCallback(num_images=2, rex={"n_partitions": 2, "mask_value": 0.0}, num_log=1)
    scores, arrays = cb.compute(Corner(), {"image": images}, None, "test")
    per_image = {**scores, "index": torch.arange(2)}
    cb.results["rex"] = {"per_image": per_image, "summary": {}, **arrays}
    trainer = SimpleNamespace(loggers=[logger], global_step=0)
    cb._log(trainer, "rex", "test", tmp_path)
    logger.experiment.finish()
    table_file, = Path(tmp_path).glob("wandb/offline-run-*/files/media/table/rex/test_images_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["image", "responsibility", "explanation"] and "deletion" in table["columns"]
    assert len(table["data"]) == 2
    # offline, the table's pictures wait in the staged artifact: read every PNG staged there back
    staged = [f for f in (tmp_path / "data").rglob("*") if f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    pictures = [np.asarray(Image.open(f).convert("RGB")).astype(int) for f in staged]
    assert len(pictures) == 6 and all(p.shape == (16, 16, 3) for p in pictures)  # two rows' image, map, explanation
    for x in images:
        assert any(np.abs(p - image_to_array(x).astype(int)).max() <= 1 for p in pictures)
    explanations = [p for p in pictures if p[8:, 8:].max() <= 0.15 * 255 * 0.2 + 2 and p[:8, :8].max() > 200]
    assert len(explanations) == 2  # the kept corner shown, the rest darkened


def test_salvage_test_logs_one_table_of_its_examples_with_pictures_and_metrics(tmp_path, monkeypatch):
    import json
    import math

    import train
    from tests.conftest import tiny_stage_args
    from tests.test_salvage_stage import TINY

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    one_step = ["--trainer.limit_train_batches", "1", "--trainer.callbacks", "[]"]
    cls = train.main(tiny_stage_args(tmp_path, "cls", "classifier_synthetic", *one_step))[0]
    sur = train.main(tiny_stage_args(tmp_path, "sur", "surrogate_synthetic", "--model.init_args.classifier_ckpt",
                                     cls["best_checkpoint"], *one_step))[0]
    train.main(tiny_stage_args(tmp_path, "expl", "salvage_synthetic", "--model.init_args.surrogate_ckpt",
                               sur["best_checkpoint"], *TINY, "--model.init_args.log_examples", "3", "--wandb", "true"))
    wandb.teardown()  # the W&B service writes an offline run's records out behind finish(): wait for it
    run, = (tmp_path / "runs" / "expl" / "wandb").glob("offline-run-*")
    table_file, = run.glob("files/media/table/test/explanations_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["image", "map", "explanation", "target", "target_name", "predicted", "predicted_name",
                                "confidence", "size", "srg", "degenerate"]
    assert len(table["data"]) == 3
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    for row, r in zip(table["data"], rows):
        assert row[:3] == ["Image"] * 3  # offline, the pictures themselves wait in the staged artifact
        assert isinstance(r["target_name"], str) and isinstance(r["predicted_name"], str)
        assert 0.0 <= r["confidence"] <= 1.0 and math.isfinite(r["srg"]) and isinstance(r["degenerate"], bool)
        assert (r["size"] is None) == r["degenerate"] and (r["size"] is None or 0.0 < r["size"] <= 1.0)
    if any(r["degenerate"] for r in rows):
        assert b"(degenerate)" in next(run.glob("run-*.wandb")).read_bytes()  # the overlay's caption says so too
    staged = [f for f in (tmp_path / "data").rglob("*") if f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    overlays = list(run.glob("files/media/images/test/attributions_*.png"))
    assert len(staged) == 9 and len(overlays) == 3  # three rows' image, map and explanation; three overlays
    for f in staged + overlays:
        picture = np.asarray(Image.open(f).convert("RGB")).astype(int)
        assert picture.shape == (32, 32, 3) and picture.max() > 60 and picture.std() > 1, f  # neither black nor flat
