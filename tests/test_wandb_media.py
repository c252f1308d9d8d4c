"""Pictures logged to W&B are the pictures: read back from an offline run's media files."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
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
