"""Scale-out: the same command runs data-parallel on 2 CPU processes (gloo), and evaluates exactly as on one."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, tiny_stage_args


def test_two_process_ddp_training_on_cpu(tmp_path):
    args = tiny_stage_args(tmp_path, "ddp") + ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    assert 0.0 <= results["test"]["test/acc_masked_0"] <= 1.0
    assert (tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt").is_file()


def _evaluate(tmp_path, ckpt: str, config: str, name: str, devices: int) -> dict:
    args = tiny_stage_args(tmp_path, name, config) + tiny_stage_args(tmp_path, "", "classifier")[-4:] + [
        "--test_only", "true", "--ckpt_path", ckpt, "--data.init_args.n_test", "7", "--data.init_args.batch_size", "2",
        "--trainer.limit_test_batches", "1.0", "--trainer.devices", str(devices),
    ] + (["--trainer.strategy", "ddp"] if devices > 1 else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / name
    return {"results": json.loads((run / "results.json").read_text()),
            "rex": json.loads((run / "rex" / "test_rex.json").read_text())}


def test_ddp_evaluation_equals_one_process_on_an_odd_test_set(tmp_path):
    """7 test images on 2 ranks: no image counted twice (sampler padding) or dropped, in test metrics or callbacks."""
    import train

    ckpt = train.main(tiny_stage_args(tmp_path, "cls", "classifier_synthetic", "--trainer.callbacks", "[]"))[0]
    config = tmp_path / "eval.yaml"
    base = yaml.safe_load((ROOT / "configs" / "classifier_synthetic.yaml").read_text())
    base["trainer"]["callbacks"] = [{"class_path": "rex.ReXCallback", "init_args": {
        "num_images": 7, "batch_size": 2, "num_log": 1, "run_after_fit": False,
        "rex": {"n_partitions": 2, "preset": "fast"}}}]
    config.write_text(yaml.safe_dump(base))
    one = _evaluate(tmp_path, ckpt["last_checkpoint"], str(config), "one", 1)
    two = _evaluate(tmp_path, ckpt["last_checkpoint"], str(config), "two", 2)
    assert two["results"]["world_size"] == 2 and one["results"]["world_size"] == 1
    assert two["results"]["test"] == one["results"]["test"]
    assert [r["index"] for r in two["rex"]["images"]] == list(range(7))
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in run["rex"]["images"]] for run in (one, two)]
    assert untimed[0] == untimed[1]
    summaries = [{k: v for k, v in run["rex"]["summary"].items() if k != "seconds"} for run in (one, two)]
    assert summaries[1] == pytest.approx(summaries[0])
