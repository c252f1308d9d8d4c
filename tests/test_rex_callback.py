"""ReXCallback: explains fixed test images after test, logs metrics and overlays (CSV logger / no logger)."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from datamodules import SyntheticDataModule
from rex import ReX, ReXCallback

REX = {"n_partitions": 2, "preset": "fast"}


def _run(tiny_classifier, tmp_path, logger):
    dm = SyntheticDataModule(img_size=32, batch_size=4, n_train=8, n_val=4, n_test=4, occluders=1)
    cb = ReXCallback(num_images=3, batch_size=2, rex=REX, steps=8, num_log=2, run_after_fit=False)
    trainer = L.Trainer(limit_test_batches=1, callbacks=[cb], logger=logger, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(tiny_classifier, datamodule=dm, verbose=False)
    return cb, dm


def test_rex_callback_logs_metrics_and_overlays_with_csv_logger(tiny_classifier, tmp_path):
    logger = CSVLogger(tmp_path, name="", version="")
    cb, dm = _run(tiny_classifier, tmp_path, logger)
    s = cb.results["rex"]["summary"]
    assert {"insertion", "deletion", "degenerate", "model_calls", "seconds"} <= set(s) and s["model_calls"] > 1
    per = cb.results["rex"]["per_image"]
    assert per["index"].tolist() == [0, 1, 2]
    images = torch.stack([dm.data_test[i]["image"] for i in range(2)])
    direct = ReX(**REX).explain(tiny_classifier.model, images)
    flat = per["degenerate"][:2].bool()  # an untrained ViT gives the blank image the same class: degenerate
    assert s["degenerate"] == pytest.approx(per["degenerate"].float().mean().item())
    assert torch.equal(per["size"][:2].isnan(), flat) and torch.equal(per["in"][:2].isnan(), flat)
    assert torch.allclose(per["size"][:2][~flat].float(), direct.size[~flat].float())
    assert torch.equal(cb.results["rex"]["explanations"][:2], direct.explanations[:, 0])
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rex/insertion", "rex/deletion", "rex/degenerate", "rex/model_calls"} <= set(header)
    out = tmp_path / "rex"
    assert sorted(p.name for p in out.glob("*.png")) == ["test_0.png", "test_1.png"]
    saved = np.load(out / "test_maps.npz")
    assert saved["maps"].shape == (3, 32, 32) and saved["explanations"].dtype == bool
    assert "images" not in saved.files and cb.results["rex"]["images"].shape == (3, 3, 32, 32)
    record = json.loads((out / "test_rex.json").read_text())
    assert len(record["images"]) == 3 and record["summary"]["deletion"] == pytest.approx(s["deletion"])


def test_rex_callback_without_logger_writes_under_root_dir(tiny_classifier, tmp_path):
    cb, _ = _run(tiny_classifier, tmp_path, False)
    assert (tmp_path / "rex" / "test_rex.json").is_file()
    assert cb.results["rex"]["maps"].shape == (3, 32, 32) and torch.isfinite(cb.results["rex"]["maps"]).all()


class _BlankKeepsClass(torch.nn.Module):
    """Class 1 for every image, the fully masked one included (image 0 a little less sure): every explanation of
    class 1 is degenerate."""

    def forward(self, x):
        bright = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(bright), 2 + bright], 1)


def test_rex_callback_flags_degenerate_explanations_in_titles_and_means():
    cb = ReXCallback(num_images=2, rex={"n_partitions": 2, "mask_value": 0.0}, num_log=2)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores, arrays = cb.compute(_BlankKeepsClass(), {"image": images}, None, "test")
    assert scores["degenerate"].tolist() == [1.0, 1.0] and scores["size"].isnan().all()
    results = {"per_image": {**scores, "index": torch.arange(2)}, **arrays}
    (_, fig), _ = cb.figures("test", "test", results)
    assert "DEGENERATE" in fig._suptitle.get_text()
