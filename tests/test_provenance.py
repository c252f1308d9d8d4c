"""Table provenance (command, machine, date, code, checkpoints with hashes, data) and paired intervals."""
from __future__ import annotations

import hashlib

import pytest
from scipy import stats

from evaluation.provenance import FIELDS, command, file_hash, header, missing_fields
from explainers.metrics import paired_interval


def test_header_has_every_field_and_the_checkpoint_hash(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    text = header("benchmarks/x.py", [ckpt], "64 scenes", argv=["--n", "64", "--name", "a b"])
    assert missing_fields(text) == []
    assert "Command: `python benchmarks/x.py --n 64 --name 'a b'`" in text
    assert f"(sha256 {hashlib.sha256(b'weights').hexdigest()[:12]})" in text and "Data: 64 scenes" in text
    assert file_hash(tmp_path / "gone.ckpt") == "missing"


def test_missing_fields_names_what_a_table_lacks():
    assert missing_fields("Command: `python a.py`\n\n| a |\n") == [f for f in FIELDS if f != "Command"]
    assert missing_fields("Machine: x; Date: today\n") == [f for f in FIELDS if f != "Machine"]  # one field a line
    assert command("/elsewhere/run.py", []) == "python /elsewhere/run.py "


def test_paired_interval_by_hand_and_against_scipy():
    a, b = [0.5, 0.7, 0.2, 0.9, None, 0.3], [0.4, 0.5, 0.3, 0.6, 0.1, float("nan")]
    d = paired_interval(a, b)  # differences 0.1, 0.2, -0.1, 0.3 (pairs with a missing value are left out)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.125)
    se = (sum((x - 0.125) ** 2 for x in (0.1, 0.2, -0.1, 0.3)) / 3) ** 0.5 / 2
    assert d["se"] == pytest.approx(se)
    assert d["high"] - d["mean"] == pytest.approx(3.182446 * se, rel=1e-6)  # t(0.975, 3 degrees of freedom)
    ref = stats.ttest_rel([0.5, 0.7, 0.2, 0.9], [0.4, 0.5, 0.3, 0.6]).confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((ref.low, ref.high))
    one = paired_interval([1.0], [0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["low"] != one["low"]  # NaN bounds
