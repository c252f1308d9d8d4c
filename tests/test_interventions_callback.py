"""GradualInterventionCallback on a tiny model and tiny synthetic scenes, with a CSV logger and with none."""
import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from datamodules import CueConfig, SyntheticDataModule
from interventions import CueStrength, GradualInterventionCallback, gradual_intervention_test


class _CueReader(L.LightningModule):
    """Logits from channel means: magenta (the cue colour) pushes class 0, green pushes class 1."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 6)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[0] = torch.tensor([4.0, -8.0, 4.0])
            self.head.weight[1] = torch.tensor([0.0, 10.0, 0.0])

    def forward(self, images):
        return self.head(images.mean((2, 3)))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def test_step(self, batch, batch_idx):
        self.log("test_acc", (self(batch["image"]).argmax(-1) == batch["label"]).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _datamodule():
    return SyntheticDataModule(img_size=16, batch_size=4, n_train=4, n_val=4, n_test=10, max_distractors=0,
                               cue=CueConfig(kind="tint", target_class=0))


def _trainer(tmp_path, callback, logger):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=1, logger=logger,
                     callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)


def test_callback_with_csv_logger_matches_direct_call(tmp_path):
    callback = GradualInterventionCallback(["cue", "object_darkness"], num_images=5, num_steps=20,
                                           num_permutations=200, exclude_classes=[0], num_plot=3, seed=3)
    dm, model = _datamodule(), _CueReader()
    trainer = _trainer(tmp_path, callback, CSVLogger(tmp_path, name="csv"))
    trainer.test(model, datamodule=dm)

    res = callback.results["cue"]
    idx = res["index"]
    assert len(idx) == 5 and all(int(dm.data_test[int(i)]["label"]) != 0 for i in idx)
    images = torch.stack([dm.data_test[int(i)]["image"] for i in idx])
    direct = gradual_intervention_test(model, images, CueStrength.from_dataset(dm.data_test, idx), 20, 200,
                                       generator=torch.Generator().manual_seed(3))
    assert torch.allclose(res["gradient"], direct.gradient.double(), atol=1e-6)
    assert torch.allclose(res["p_value"], direct.p_value.double())
    assert torch.equal(res["flip_count"], direct.flip_count)
    assert res["flip_rate"] == pytest.approx(direct.flipped.float().mean().item())
    assert res["gradient_mean"] > 0.1  # the magenta tint moves this reader towards class 0

    out = tmp_path / "csv" / "version_0"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("intervention/") and v}
    assert logged["intervention/cue/gradient_mean"] == pytest.approx(res["gradient_mean"])
    assert logged["intervention/object_darkness/flip_rate"] == pytest.approx(
        callback.results["object_darkness"]["flip_rate"])
    assert (out / "interventions" / "test_cue.png").stat().st_size > 0
    record = json.loads((out / "interventions" / "test_object_darkness.json").read_text())
    assert [r["index"] for r in record["images"]] == idx.tolist()


def test_callback_without_logger_after_fit(tmp_path):
    callback = GradualInterventionCallback(["background"], num_images=3, num_steps=10, num_permutations=50,
                                           run_after_test=False)
    trainer = _trainer(tmp_path, callback, False)
    trainer.fit(_CueReader(), datamodule=_datamodule())
    res = callback.results["background"]
    assert res["index"].tolist() == [0, 1, 2]
    assert res["curves"].shape == (3, 10)
    assert 0.0 <= res["significant_frac"] <= 1.0
    assert (tmp_path / "interventions" / "fit_background.png").exists()
