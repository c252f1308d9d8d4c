"""The oracle flip rate: an independent judge's argmax on the counterfactual against the target, on hand-made cases."""
import importlib.util
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from datamodules import SyntheticDataModule
from explainers.protocol import Explanation
from rcsb import BridgeModule, RCSBCallback
from rcsb.callback import oracle_flipped

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


class BrightnessOracle(nn.Module):
    """Says class round(5 * mean brightness): constant images of value v/5 are class v."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean((1, 2, 3))[:, None] * 5
        return -(level - torch.arange(6.0)) ** 2


def constant_images(values: list[float]) -> torch.Tensor:
    """(B, 3, 8, 8) images, image i all `values[i]`."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()


def load_benchmark():
    """benchmarks/rcsb_synthetic.py as a module."""
    spec = importlib.util.spec_from_file_location("rcsb_synthetic", ROOT / "benchmarks" / "rcsb_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_flipped_is_the_oracles_argmax_against_the_target():
    cf = constant_images([0.0, 0.2, 0.6, 1.0])  # the oracle says 0, 1, 3, 5
    flags = oracle_flipped(BrightnessOracle(), cf, torch.tensor([0, 2, 3, 4]))
    assert flags.tolist() == [True, False, True, False]
    assert oracle_flipped(BrightnessOracle(), cf, 1).tolist() == [False, True, False, False]


def test_benchmark_row_reports_oracle_flip_rate_with_its_standard_error(monkeypatch):
    bench = load_benchmark()
    assert bench.rate(torch.tensor([1.0, 0.0, 1.0, 0.0])) == (0.5, 0.25)
    p, se = bench.rate(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    assert p == pytest.approx(0.6) and se == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert bench.parse_region("auto:rex@0.1") == ("auto:rex", 0.1) and bench.parse_region("box:4") == ("box:4", 0.3)
    originals = [constant_images([0.2, 0.2]), constant_images([0.4, 0.4])]
    edits = {0: constant_images([0.6, 0.2]), 1: constant_images([0.6, 1.0])}  # the oracle says 3, 1 | 3, 5
    targets = [torch.tensor([3, 2]), torch.tensor([3, 3])]

    def fake_rcsb(models, images, target, batch, region, nfe, **options):
        cf = edits[int(batch["index"])]
        return Explanation(target=target, counterfactual=cf, region=region, scores={
            "flipped": torch.tensor([True, True]), "target_probability": torch.ones(2),
            "original_probability": torch.zeros(2), "l1_inside": torch.zeros(2), "change_outside": torch.zeros(2)})

    monkeypatch.setattr(bench, "frechet_distance", lambda *a: 0.0)
    monkeypatch.setattr(bench, "lpips_distance", lambda *a: torch.zeros(2))
    runner = bench.Runner(None, None, None, type("A", (), {"nfe": 2})(), BrightnessOracle())
    runner.method = fake_rcsb
    data = [{"image": im, "index": torch.tensor(i)} for i, im in enumerate(originals)]
    regions = [torch.ones(2, 1, 8, 8, dtype=torch.bool)] * 2
    row = runner.run(nn.Identity(), data, regions, targets)
    assert row["per_image"]["oracle_flipped"] == [1.0, 0.0, 1.0, 0.0]
    assert row["oracle"] == "0.500 ± 0.250" and row["flip"] == "1.000 ± 0.000"
    assert row["oracle_before"] == 0.0  # the oracle says 1, 1, 2, 2 on the originals


def test_rcsb_callback_logs_the_oracle_flip_rate(tiny_classifier, tmp_path):
    torch.manual_seed(0)
    bridge = BridgeModule(network={"preset": "tiny", "model_channels": 32, "channel_mult": [1, 2]}, image_size=32)
    for module, name in ((bridge, "bridge"), (tiny_classifier, "oracle")):
        state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
        module.on_save_checkpoint(state)
        torch.save(state, tmp_path / f"{name}.ckpt")
    cb = RCSBCallback(bridge_ckpt=str(tmp_path / "bridge.ckpt"), oracle_ckpt=str(tmp_path / "oracle.ckpt"),
                      num_images=2, batch_size=2, num_log=0, run_after_fit=False, run_after_test=True,
                      options={"nfe": 2, "start": 100})
    dm = SyntheticDataModule(img_size=32, batch_size=4, n_train=8, n_val=4, n_test=4)
    trainer = L.Trainer(limit_test_batches=1, callbacks=[cb], logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(tiny_classifier, datamodule=dm, verbose=False)
    res = cb.results["rcsb"]
    # the oracle is the classifier itself here, so it agrees with the classifier's flip on every image
    assert torch.equal(res["per_image"]["oracle_flipped"], res["per_image"]["flipped"])
    assert res["summary"]["oracle_flipped"] == res["summary"]["flipped"]
