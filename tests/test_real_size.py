"""benchmarks/real_size.py as a dry run: every stage of the Pet configs built, chained and timed at batch 2 and 28 px;
the table's structure, and its projections equal to split size x epochs / measured throughput."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks import real_size
from evaluation import provenance

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the markdown table under `heading`, as dicts by column name."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    assert set(rows[1]) == {"---"}
    return [dict(zip(header, row, strict=True)) for row in body]


def _epochs(config: str) -> int:
    return yaml.safe_load((CONFIGS / config).read_text())["trainer"]["max_epochs"]


def test_dry_run_writes_rates_and_projections_of_every_stage(tmp_path, one_thread, capsys):
    out = tmp_path / "real_size.md"
    results = real_size.main(["--dry-run", "--datasets", "pet", "--out", str(out)])
    assert "a GPU call of these settings: about" in capsys.readouterr().out
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == f"Command: `python benchmarks/real_size.py --dry-run --datasets pet --out {out}`"
    assert lines[2].startswith("Machine: ") and ", 1 of " in lines[2] and "GPU" not in lines[2]
    assert lines[4].startswith("Date: ") and lines[4].endswith(" UTC") and "This call took" in text
    assert provenance.missing_fields(text) == []
    assert "**Dry run**" in text

    rates = _table(text, "## Throughput")
    assert [(r["dataset"], r["stage"]) for r in rates] == [("pet", s) for s in real_size.STAGES]
    assert [r["config"] for r in rates] == ["classifier_pet.yaml", "surrogate_pet.yaml", "salvage_pet.yaml",
                                           "salvage_pet.yaml"]
    for row in rates:
        assert (row["px"], row["batch"], row["precision"]) == ("28", "2", "bf16-mixed")
        assert all(float(row[k]) > 0 for k in ("train img/s", "eval img/s", "test img/s"))
        assert (row["SRG val img/s"] == "—") == (row["stage"] in ("classifier", "surrogate"))
        assert row["peak GiB train"] == "—"  # a CPU has no GPU memory to report
    assert [r.stage for r in results] == list(real_size.STAGES)
    assert results[3].train_ips > 0 and results[2].srg_ips > 0

    n_train, n_val, n_test = real_size.SPLITS["pet"]
    assert (n_train, n_val, n_test) == (5880, 735, 734)
    projected = _table(text, "## Projected hours")
    by_stage = {row["stage"]: row for row in projected}
    assert list(by_stage) == [*real_size.STAGES, "pipeline"]
    for rate in rates:
        row = by_stage[rate["stage"]]
        epochs = _epochs(rate["config"])
        assert (int(row["train images"]), int(row["epochs"])) == (n_train, epochs)
        assert int(row["iterations"]) == n_train // 2 * epochs
        assert float(row["train h"]) == pytest.approx(n_train * epochs / float(rate["train img/s"]) / 3600, rel=2e-3)
        assert float(row["test h"]) == pytest.approx(n_test / float(rate["test img/s"]) / 3600, rel=2e-3)
        parts = sum(float(row[k]) for k in ("train h", "validation h", "test h"))
        assert float(row["total h"]) == pytest.approx(parts, rel=2e-3)
    plain = by_stage["classifier"]
    assert float(plain["validation h"]) == pytest.approx(25 * n_val / float(rates[0]["eval img/s"]) / 3600, rel=2e-3)
    chain = sum(float(by_stage[s]["total h"]) for s in ("classifier", "surrogate", "salvage"))
    assert float(by_stage["pipeline"]["total h"]) == pytest.approx(chain, rel=2e-3)


def test_projection_counts_each_split_and_the_explainers_metric_batches():
    r = real_size.StageResult("mura", "salvage", "salvage_mura.yaml", 224, 64, "bf16-mixed", 50, 2,
                              train_ips=100.0, eval_ips=200.0, test_ips=4.0, srg_ips=10.0)
    hours = real_size.projection(r)
    n_train, n_val, n_test = real_size.SPLITS["mura"]
    assert hours["train"] == pytest.approx(n_train * 50 / 100 / 3600)
    assert hours["validation"] == pytest.approx(50 * ((n_val - 128) / 200 + 128 / 10) / 3600)
    assert hours["test"] == pytest.approx(n_test / 4 / 3600)
    assert hours["total"] == pytest.approx(hours["train"] + hours["validation"] + hours["test"])
    assert real_size.SPLITS["imagenette"] == (9469, 1963, 1962) and sum(real_size.SPLITS["mura"][:2]) == 36808


def test_a_whole_gpu_call_is_expected_within_eight_minutes():
    settings = real_size.Settings()
    seconds = real_size.expected_seconds(settings, list(real_size.DATASETS), list(real_size.STAGES))
    assert 60 < seconds < 8 * 60
