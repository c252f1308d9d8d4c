"""report.html of an explain run: one self-contained page that works offline (pictures as files beside it).

The run's command, model, data and date; the comparison table (mean ± standard error, sortable by clicking a
column); the mean insertion and deletion curves per method (ReX section 6); and a grid with the images as rows and
the methods as columns, each cell the map over the image with the extracted explanation outlined and its scores
(an intervention's or a counterfactual's figure for methods without a map), the curves of each image on demand.
As in Captum Insights the rendering is apart from the computation: `python -m evaluation.report OUT_DIR`
re-renders a finished run from its summary.json and npz files.
"""
from __future__ import annotations

import argparse
import html
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.table import COST_KEYS, mean_se, method_summaries

#: Line colours of the methods in the curve plots (matplotlib's tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
#: Scores a grid cell shows under a map, in this order, when the record has them.
CELL_KEYS = ("size", "insertion", "deletion", "in", "out", "rra", "rma", "srg", "r_srg")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .4em} h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:3px 7px}
table.meta td:first-child{font-weight:600;white-space:nowrap} td.num{text-align:right;white-space:nowrap}
table.sortable th{cursor:pointer;background:#f3f3f3} table.sortable th:hover{background:#e4e4e4}
table.grid td{vertical-align:top;text-align:center} table.grid img.map{width:128px;image-rendering:pixelated}
table.grid img.figure{width:360px} .scores{font-size:11px;text-align:left;line-height:1.3}
td.degenerate{background:#fde2e2} .flag{color:#b00;font-weight:600;font-size:11px}
.curves{display:flex;gap:1em;flex-wrap:wrap} code{font-size:12px}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = th.dataset.order !== 'asc';
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col]; return c.dataset.value === undefined ? c.textContent
                     : (c.dataset.value === '' ? NaN : Number(c.dataset.value)); };
  [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === 'string') return asc ? x.localeCompare(y) : y.localeCompare(x);
    if (isNaN(x)) return 1; if (isNaN(y)) return -1;
    return asc ? x - y : y - x;
  }).forEach(r => body.appendChild(r));
}));
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _header(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The run's command, model, data, date and size."""
    source = meta.get("source")
    data = (f"{source.get('data')}, {source.get('split')} split, first {source.get('limit') or 'all'} images"
            if isinstance(source, dict) else ", ".join(map(str, source or [])))
    rows = [("command", f"<code>{_e(meta.get('command', '(not recorded)'))}</code>"),
            ("model", _e(f"{meta.get('checkpoint', '?')}" + (f" ({meta['stage']})" if meta.get("stage") else ""))),
            ("data", _e(data or "?")),
            ("date", _e(meta.get("date", "(not recorded)"))),
            ("methods", _e(", ".join(dict.fromkeys(r["method"] for r in records)))),
            ("images", str(len({r["image"] for r in records})))]
    return "<table class='meta'>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _comparison(records: list[dict[str, Any]]) -> str:
    """The comparison table; each numeric cell carries its mean in `data-value` for sorting."""
    keys, summaries = method_summaries(records)
    head = ["method", "images", "degenerate", *keys, "seconds/image", "model calls/image"]
    body = []
    for m, stats in summaries.items():
        cells = [f"<td>{_e(m)}</td>", f"<td class='num' data-value='{stats['images']}'>{stats['images']}</td>",
                 f"<td class='num' data-value='{stats['degenerate']}'>{stats['degenerate']}</td>"]
        for k in [*keys, *COST_KEYS]:
            value = f"{stats[k]:.6g}" if k in stats else ""
            cells.append(f"<td class='num' data-value='{value}'>{_e(mean_se(stats, k))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table class='sortable' id='comparison'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            + "<p>mean ± standard error over images; a degenerate image's size, IN and OUT are left out (n = images "
              "counted); click a column to sort.</p>")


def curve_svg(curves: dict[str, np.ndarray], colours: dict[str, str], title: str, width: int = 400,
              height: int = 210) -> str:
    """An inline SVG line plot of curves {label: (steps + 1,)} over the fraction of pixels 0..1, legend on the
    right."""
    left, right, top, bottom = 38, 100, 22, 30
    ymax = max([1.0, *(float(np.nanmax(c)) for c in curves.values() if np.isfinite(c).any())])
    ymax = math.ceil(ymax * 10) / 10

    def xy(fx: float, fy: float) -> tuple[float, float]:
        return left + fx * (width - left - right), height - bottom - fy / ymax * (height - top - bottom)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>",
             f"<text x='{(width - right + left) / 2}' y='14' text-anchor='middle' font-size='12'>{_e(title)}</text>"]
    for tick in np.arange(0, ymax + 1e-9, 0.5 if ymax <= 2 else 1.0):
        _, y = xy(0, tick)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end' font-size='10'>{tick:g}</text>")
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x, y = xy(tick, 0)
        parts.append(f"<text x='{x:.1f}' y='{y + 14:.1f}' text-anchor='middle' font-size='10'>{tick:g}</text>")
    parts.append(f"<text x='{(width - right + left) / 2}' y='{height - 2}' text-anchor='middle' font-size='10'>"
                 "fraction of pixels</text>")
    for i, (label, curve) in enumerate(curves.items()):
        fx = np.linspace(0, 1, len(curve))
        points = " ".join("{:.1f},{:.1f}".format(*xy(a, b)) for a, b in zip(fx, curve) if np.isfinite(b))
        parts.append(f"<polyline fill='none' stroke='{colours[label]}' stroke-width='1.6' points='{points}'/>"
                     f"<text x='{width - right + 8}' y='{top + 10 + 13 * i}' font-size='11' "
                     f"fill='{colours[label]}'>{_e(label)}</text>")
    return "".join(parts) + "</svg>"


def _load_curves(out_dir: Path, records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """{(image, method): {"insertion": curve, "deletion": curve}} from the npz files that hold them."""
    out = {}
    for r in records:
        path = out_dir / r.get("files", {}).get("npz", "")
        if path.is_file():
            with np.load(path) as arrays:
                if "insertion_curve" in arrays:
                    out[r["image"], r["method"]] = {"insertion": arrays["insertion_curve"],
                                                    "deletion": arrays["deletion_curve"]}
    return out


def _mean_curves(curves: dict[tuple[str, str], dict[str, np.ndarray]], methods: list[str],
                 colours: dict[str, str]) -> str:
    """The mean insertion and deletion curve of every method with curves."""
    plots = []
    for kind in ("insertion", "deletion"):
        means = {}
        for m in methods:
            mine = [c[kind] for (_, method), c in curves.items() if method == m]
            if mine:
                means[m] = np.mean(np.stack(mine), 0)
        if means:
            n = len({image for image, _ in curves})
            plots.append(curve_svg(means, colours, f"mean {kind} curve ({n} images)"))
    if not plots:
        return ""
    return ("<h2>Insertion and deletion curves</h2><div class='curves'>" + "".join(plots) + "</div>"
            "<p>target probability over the fraction of pixels inserted into a blank image (or deleted from the "
            "image) in the order of each map, divided by the full image's probability; the AUCs are the table's "
            "insertion (higher is better) and deletion (lower is better).</p>")


def _cell(record: dict[str, Any]) -> str:
    """One grid cell: the map with the outlined explanation (or the method's figure) and its scores."""
    files, scores = record.get("files", {}), record.get("metrics", {})
    if "cell" in files:
        picture = f"<img class='map' src='{_e(files['cell'])}' alt='{_e(record['method'])} map'>"
        shown = [k for k in CELL_KEYS if k in scores]
    else:
        picture = f"<img class='figure' src='{_e(files.get('overlay', ''))}' alt='{_e(record['method'])} figure'>"
        shown = list(scores)
    lines = "<br>".join(f"{_e(k)} {_number(scores[k])}" for k in shown)
    flag = ""
    cls = ""
    if record.get("degenerate"):
        flag, cls = "<div class='flag'>degenerate: the blank image already gives this class</div>", " degenerate"
    return (f"<td class='cell{cls}' data-method='{_e(record['method'])}'>{picture}{flag}"
            f"<div class='scores'>{lines}</div></td>")


def _grid(records: list[dict[str, Any]], methods: list[str], curves: dict[tuple[str, str], dict[str, np.ndarray]],
          colours: dict[str, str]) -> str:
    """Images as rows, methods as columns; each image's curves in a <details> under it."""
    by_key = {(r["image"], r["method"]): r for r in records}
    rows = []
    for image in dict.fromkeys(r["image"] for r in records):
        first = next(r for r in records if r["image"] == image)
        label = f"<br>label {_e(first.get('label_name', first['label']))}" if "label" in first else ""
        head = (f"<img class='map' src='{_e(first.get('files', {}).get('image', ''))}' alt='{_e(image)}'><br>"
                f"<b>{_e(image)}</b><br>predicted {_e(first['predicted_name'])} (p = {first['confidence']:.2f})"
                f"{label}<br>explained {_e(first.get('target_name', first['target']))} "
                f"(p = {first['target_confidence']:.2f})")
        mine = {m: curves[image, m] for m in methods if (image, m) in curves}
        if mine:
            plots = "".join(curve_svg({m: c[kind] for m, c in mine.items()}, colours, f"{kind}: {image}", 360, 190)
                            for kind in ("insertion", "deletion"))
            head += f"<details><summary>curves</summary><div class='curves'>{plots}</div></details>"
        cells = "".join(_cell(by_key[image, m]) if (image, m) in by_key else "<td>–</td>" for m in methods)
        rows.append(f"<tr data-image='{_e(image)}'><td class='image'>{head}</td>{cells}</tr>")
    return ("<table class='grid' id='grid'><thead><tr><th>image</th>" + "".join(f"<th>{_e(m)}</th>" for m in methods)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def write_report(out_dir: str | Path, records: list[dict[str, Any]] | None = None,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/report.html` from the run's records (default: its summary.json) and npz files; file paths in
    the records are relative to `out_dir`. Returns the page's path."""
    out_dir = Path(out_dir)
    if records is None:
        summary = json.loads((out_dir / "summary.json").read_text())
        records = summary.pop("records")
        meta = summary if meta is None else meta
    meta = meta or {}
    methods = list(dict.fromkeys(r["method"] for r in records))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    curves = _load_curves(out_dir, records)
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Explanations: "
            f"{_e(', '.join(methods))}</title><style>{STYLE}</style></head><body>"
            "<h1>Explanations</h1>" + _header(meta, records)
            + "<h2>Comparison</h2>" + _comparison(records)
            + _mean_curves(curves, methods, colours)
            + "<h2>Every image</h2><p>each map over the greyed image (jet colours, its own range), the extracted "
              "sufficient explanation outlined in yellow; scores below.</p>" + _grid(records, methods, curves, colours)
            + f"<p style='font-size:11px;color:#777'>written {datetime.now().isoformat(timespec='seconds')}</p>"
            + f"<script>{SORT_SCRIPT}</script></body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> Path:
    """`python -m evaluation.report OUT_DIR`: re-render the report of a finished explain run."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out_dir", help="the --out folder of an explain.py run (with summary.json)")
    args = p.parse_args(argv)
    if not (Path(args.out_dir) / "summary.json").is_file():
        raise SystemExit(f"error: {args.out_dir} has no summary.json; give the --out folder of an explain.py run")
    path = write_report(args.out_dir)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
