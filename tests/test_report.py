"""report.html of an explain run, parsed: every cell, every file it references, the table against summary.json."""
from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from PIL import Image

import explain
import train
from evaluation.report import main as rerender
from explainers.figures import outline_array
from tests.conftest import tiny_stage_args

DATA = ["--data", "classifier_synthetic", "--limit", "3", "--data-arg", "img_size=32", "--data-arg", "n_test=6",
        "--data-arg", "occluders=1"]
METHODS = ["random", "saliency", "intervention"]


class Page(HTMLParser):
    """The parts of the report a test reads: files referenced, grid cells, comparison rows, curves, text."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[str] = []
        self.cells: dict[tuple[str, str], dict] = {}
        self.rows: list[list[tuple[str | None, str]]] = []
        self.polylines: list[int] = []
        self.text: list[str] = []
        self._image: str | None = None
        self._cell: dict | None = None
        self._table: str | None = None
        self._td: list | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.files.append(a.get("src") or a.get("href"))
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and "data-image" in a:
            self._image = a["data-image"]
        if tag == "tr" and self._table == "comparison":
            self.rows.append([])
        if tag == "td" and self._table == "comparison":
            self._td = [a.get("data-value"), ""]
        if tag == "td" and "data-method" in a:
            self._cell = {"class": a.get("class", ""), "text": "", "img": None}
            self.cells[self._image, a["data-method"]] = self._cell
        if tag == "img" and self._cell is not None:
            self._cell["img"] = a
        if tag == "polyline":
            self.polylines.append(len(a["points"].split()))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._td is not None:
            self.rows[-1].append(tuple(self._td))
            self._td = None
        if tag == "td":
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._td is not None:
            self._td[1] += data
        if self._cell is not None:
            self._cell["text"] += data + " "


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    ckpt = train.main(tiny_stage_args(root, "cls"))[0]["best_checkpoint"]
    out = root / "out"
    explain.main(["--ckpt", ckpt, "--method", ",".join(METHODS), "--property", "object_fade", *DATA, "--out", str(out),
                  "--option", "intervention.num_steps=6", "--option", "intervention.num_permutations=20",
                  "--steps", "8"])
    return out


def _page(out: Path) -> Page:
    page = Page()
    page.feed((out / "report.html").read_text())
    return page


def test_every_cell_and_every_referenced_file_is_there(run):
    records = json.loads((run / "summary.json").read_text())["records"]
    page = _page(run)
    images = {r["image"] for r in records}
    assert len(images) == 3 and set(page.cells) == {(i, m) for i in images for m in METHODS}
    assert page.files and all((run / f).is_file() for f in page.files)
    for r in records:
        cell = page.cells[r["image"], r["method"]]
        assert ("degenerate" in cell["class"]) == bool(r.get("degenerate"))
        if r["method"] == "intervention":  # the probability curve figure, with S, p and flips
            assert cell["img"]["src"] == r["files"]["overlay"]
            assert all(f"{k} " in cell["text"] for k in ("S", "p", "flips"))
        else:  # the map over the image with its outlined explanation, and its scores
            assert cell["img"]["src"] == r["files"]["cell"] and "insertion" in cell["text"]
    text = " ".join(page.text)
    assert "python explain.py --ckpt" in text and "classifier_synthetic, test split, first 3 images" in text


def test_the_table_holds_mean_and_standard_error_of_summary_json(run):
    records = json.loads((run / "summary.json").read_text())["records"]
    page = _page(run)
    rows = {row[0][1]: row for row in page.rows if row}
    assert set(rows) == set(METHODS)
    head = ["method", "images", "degenerate", "size", "insertion", "deletion", "in", "out", "rra", "rma", "S", "p",
            "flips", "seconds", "model_calls"]
    for method, row in rows.items():
        assert len(row) == len(head)
        mine = [r for r in records if r["method"] == method]
        for key, (value, shown) in zip(head[3:], row[3:]):
            got = [r[key] if key in ("seconds", "model_calls") else r["metrics"].get(key) for r in mine]
            got = np.array([v for v in got if v is not None], dtype=float)
            if not len(got):
                assert value == "" and shown == "-"
                continue
            mean, se = got.mean(), got.std(ddof=1) / math.sqrt(len(got))
            assert float(value) == pytest.approx(mean, rel=1e-5, abs=1e-7)
            cost = key in ("seconds", "model_calls")  # each batch's share: the mean alone
            assert shown == f"{mean:.3f}" if cost else shown.startswith(f"{mean:.3f} ± {se:.3f}")


def test_curves_are_the_ones_the_aucs_integrate(run):
    records = json.loads((run / "summary.json").read_text())["records"]
    for r in records:
        if r["method"] == "intervention":
            continue
        arrays = np.load(run / r["files"]["npz"])
        for kind in ("insertion", "deletion"):
            curve = arrays[f"{kind}_curve"]
            assert curve.shape == (9,)
            assert np.trapezoid(curve, np.linspace(0, 1, 9)) == pytest.approx(r["metrics"][kind], abs=1e-5)
    page = _page(run)
    # two mean plots with a line per map method, and two per image with the same
    assert page.polylines == [9] * (2 * 2 + 3 * 2 * 2)


def test_rerendering_a_finished_run_gives_the_same_page(run, tmp_path):
    first = (run / "report.html").read_text()
    rerender([str(run)])
    again = (run / "report.html").read_text()
    cut = first.index("written 20")
    assert again[:cut] == first[:cut]
    with pytest.raises(SystemExit, match="no summary.json"):
        rerender([str(tmp_path)])


def test_outline_paints_the_boundary_of_the_mask_only():
    picture = np.zeros((5, 5, 3), np.uint8)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[1:4, 1:4] = True
    out = outline_array(picture, mask)
    painted = (out == [255, 255, 0]).all(-1)
    expected = mask.numpy().copy()
    expected[2, 2] = False  # the one interior pixel
    assert (painted == expected).all() and (picture == 0).all()
    edge = torch.ones(3, 3, dtype=torch.bool)  # a mask touching the picture's edge is outlined along it
    assert (outline_array(np.zeros((3, 3, 3), np.uint8), edge) == [255, 255, 0]).all(-1).sum() == 8


def test_explain_wandb_logs_one_table_of_pictures_and_scores(run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))  # where a table's pictures are staged offline
    ckpt = json.loads((run / "summary.json").read_text())["checkpoint"]
    out = tmp_path / "out"
    records = explain.main(["--ckpt", ckpt, "--method", "random,intervention", "--property", "object_fade", *DATA[:2],
                            "--limit", "2", *DATA[4:], "--out", str(out), "--option", "intervention.num_steps=6",
                            "--option", "intervention.num_permutations=20", "--steps", "8", "--wandb"])
    wandb.teardown()  # the W&B service writes an offline run out behind finish(): wait for it
    table_file, = out.glob("wandb/offline-run-*/files/media/table/explanations_*.table.json")
    table = json.loads(table_file.read_text())
    columns = table["columns"]
    assert columns[:3] == ["image", "map", "explanation"] and {"method", "degenerate", "insertion", "S"} <= set(columns)
    assert len(table["data"]) == len(records) == 4
    for row in table["data"]:
        r = dict(zip(columns, row))
        rec = next(x for x in records if x["image"] == r["image_name"] and x["method"] == r["method"])
        assert r["degenerate"] == bool(rec.get("degenerate"))
        key = "insertion" if r["method"] == "random" else "S"
        assert r[key] == pytest.approx(rec["metrics"][key])
        assert (r["explanation"] is None) == (r["method"] == "intervention")
    staged = [f for f in (tmp_path / "data").rglob("*") if f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    pictures = [np.asarray(Image.open(f).convert("RGB")).astype(int) for f in staged]
    # two images x (image, map, explanation) for random and (image, figure) for the intervention
    assert len(pictures) == 10 and all(p.std() > 1 for p in pictures)  # none blank
