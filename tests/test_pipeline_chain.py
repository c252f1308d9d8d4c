"""The real chains end to end: pipeline_{pet,imagenette,mura}.yaml on fake trees in each dataset's standard layout,
with the configs' DINOv2-reg ViT-S/14 from random weights (28 px, a 2 x 2 patch grid), two training steps per stage
and batches of 2; then explain.py runs salvage and rex on the explainer checkpoint the chain produced.

It runs on one intra-op thread: on a shared 2-core machine a ViT-S pass over a tiny batch takes a quarter of the
time it takes on two.
All three run by default (about 25 s each on one thread); they are marked slow, so `-m "not slow"` leaves them out.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import explain
import train
from models import load_checkpoint
from tests.test_real_datamodules import make_imagenette, make_mura, make_pet

IMG = 28
BACKBONE = "vit_small_patch14_reg4_dinov2"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the stage overrides a CPU needs beside the configs' own hand-over of checkpoints: random weights at 28 px, and the
#: explainer's masks and R-SRG masks cut to the fewest its sampler and metrics take
STAGE_OVERRIDES = {
    "classifier": {"model.init_args.pretrained": False, "model.init_args.img_size": IMG},
    "surrogate": {},
    "explainer": {"model.init_args.masks_per_image": 2, "model.init_args.val_r_masks": 1,
                  "model.init_args.test_r_masks": 1, "model.init_args.val_batches": 1},
}
DATASETS: dict[str, tuple[Callable[[Path], None], str, int]] = {
    "pet": (make_pet, "datamodules.PetDataModule", 37),
    "imagenette": (lambda root: make_imagenette(root, n_train=1, n_val=2), "datamodules.ImagenetteDataModule", 10),
    "mura": (make_mura, "datamodules.MuraDataModule", 2),
}


def tiny_chain(root: Path, dataset: str) -> list[str]:
    """Write the dataset's pipeline config with the CPU stage overrides under root; train.py's arguments to run it."""
    spec = yaml.safe_load((CONFIGS / f"pipeline_{dataset}.yaml").read_text())
    for stage in spec["pipeline"]:
        stage["overrides"] = {**(stage.get("overrides") or {}), **STAGE_OVERRIDES[stage["name"]]}
    config = root / f"pipeline_{dataset}.yaml"
    config.write_text(yaml.safe_dump(spec))
    return [
        "--config", str(config), "--run_root", str(root / "runs"), "--wandb", "false",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.root", str(root / "data"), "--data.init_args.img_size", str(IMG),
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    ]


def _finite_numbers(values: dict) -> bool:
    return bool(values) and all(isinstance(v, float) and math.isfinite(v) for v in values.values())


@pytest.fixture
def chain_root(tmp_path: Path) -> Iterator[Path]:
    """A folder for one chain; its 1.6 GB of checkpoints are deleted afterwards."""
    yield tmp_path
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["pet", "imagenette", "mura"])
def test_real_chain_trains_hands_checkpoints_on_and_explains(dataset: str, chain_root: Path, one_thread):
    """Each stage writes finite test metrics and hands its best checkpoint on; explain.py reads the explainer's."""
    make_tree, datamodule, num_classes = DATASETS[dataset]
    make_tree(chain_root / "data")
    results = train.main(tiny_chain(chain_root, dataset))

    assert [r["stage"] for r in results] == ["classifier", "surrogate", "explainer"]
    runs = chain_root / "runs" / f"pipeline_{dataset}"
    saved = {}
    for r in results:
        stage = r["name"].split("/")[-1]
        saved[stage] = json.loads((runs / stage / "results.json").read_text())
        assert saved[stage] == r and Path(r["best_checkpoint"]).is_file()
        assert _finite_numbers(r["test"]), (stage, r["test"])
    assert {"test/acc_masked_0", "test/acc_masked_75"} <= set(saved["classifier"]["test"])
    assert "test/agreement_top1" in saved["surrogate"]["test"]
    assert {"test/srg", "test/r_srg", "test/explainer_acc"} <= set(saved["explainer"]["test"])
    assert ("test/rma" in saved["explainer"]["test"]) == (dataset == "pet")  # only Pet has object masks

    configs = {stage: yaml.safe_load((runs / stage / "config.yaml").read_text()) for stage in saved}
    assert all(c["data"]["class_path"] == datamodule for c in configs.values())
    classifier = configs["classifier"]["model"]["init_args"]
    assert (classifier["backbone"], classifier["num_classes"]) == (BACKBONE, num_classes)
    assert classifier["pretrained"] is False and classifier["img_size"] == IMG
    assert configs["surrogate"]["model"]["init_args"]["classifier_ckpt"] == saved["classifier"]["best_checkpoint"]
    assert configs["explainer"]["model"]["init_args"]["surrogate_ckpt"] == saved["surrogate"]["best_checkpoint"]
    surrogate = load_checkpoint(saved["surrogate"]["best_checkpoint"], expect="surrogate")["hyper_parameters"]
    assert surrogate["classifier_ckpt"] == saved["classifier"]["best_checkpoint"]  # the explainer's reference model
    assert configs["explainer"]["model"]["init_args"]["binary"] == (dataset == "mura")
    assert all(c["trainer"]["precision"] == "bf16-mixed" for c in configs.values())

    out = chain_root / "explain"
    explain.main([
        "--ckpt", saved["explainer"]["best_checkpoint"], "--method", "salvage,rex", "--data", f"pipeline_{dataset}",
        "--data-arg", f"root={chain_root / 'data'}", "--data-arg", f"img_size={IMG}", "--data-arg", "num_workers=0",
        "--limit", "2", "--option", "rex.n_partitions=2", "--option", "rex.preset=fast", "--srg-masks", "1",
        "--steps", "4", "--accelerator", "cpu", "--batch-size", "2", "--out", str(out),
    ])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "explainer" and summary["checkpoint"] == saved["explainer"]["best_checkpoint"]
    records = summary["records"]
    assert sorted(r["method"] for r in records) == ["rex", "rex", "salvage", "salvage"]
    for record in records:
        assert 0 <= record["predicted"] < num_classes
        assert math.isfinite(record["metrics"]["srg"]) and math.isfinite(record["metrics"]["insertion"])
