"""RCSBCallback on a tiny classifier with an untrained tiny bridge: counterfactuals logged, outside unchanged."""
import json

import lightning as L
import pytest
import torch

from datamodules import SyntheticDataModule
from rcsb import BridgeModule, RCSBCallback

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rcsb_callback_after_test_logs_counterfactuals(tiny_classifier, tmp_path):
    torch.manual_seed(0)
    bridge = BridgeModule(network={"preset": "tiny", "model_channels": 32, "channel_mult": [1, 2]}, image_size=32)
    state = {"state_dict": bridge.state_dict(), "hyper_parameters": dict(bridge.hparams)}
    bridge.on_save_checkpoint(state)
    torch.save(state, tmp_path / "bridge.ckpt")
    with pytest.raises(ValueError, match="exactly one of bridge_ckpt"):
        RCSBCallback()
    cb = RCSBCallback(bridge_ckpt=str(tmp_path / "bridge.ckpt"), num_images=3, batch_size=2, num_log=2,
                      run_after_fit=False, run_after_test=True, options={"nfe": 2, "start": 100})
    dm = SyntheticDataModule(img_size=32, batch_size=4, n_train=8, n_val=4, n_test=4)
    trainer = L.Trainer(limit_test_batches=1, callbacks=[cb], logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(tiny_classifier, datamodule=dm, verbose=False)
    res = cb.results["rcsb"]
    assert res["per_image"]["index"].tolist() == [0, 1, 2]
    labels = torch.stack([dm.data_test[i]["label"] for i in range(3)])
    assert torch.equal(res["per_image"]["target"].long(), (labels + 1) % 6)
    assert res["summary"]["change_outside"] == 0.0 and 0 <= res["summary"]["flipped"] <= 1
    regions = res["regions"]
    assert torch.equal(regions, torch.stack([dm.data_test[i]["mask"] for i in range(3)]).bool())
    assert sorted(p.name for p in (tmp_path / "rcsb").glob("*.png")) == ["test_0.png", "test_1.png"]
    assert len(json.loads((tmp_path / "rcsb" / "test_rcsb.json").read_text())["images"]) == 3
