"""Scale-out: the same command runs data-parallel on 2 CPU processes (gloo) and gathers test metrics."""
import json
import os
import subprocess
import sys

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
