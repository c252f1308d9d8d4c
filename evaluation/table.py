"""The comparison table: one row per method, mean ± std of every metric over images, cost per image."""
from __future__ import annotations

from typing import Any

from evaluation.suite import METRIC_KEYS
from explainers.metrics import summarise


def comparison_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, mean ± std of each metric over images, seconds and model calls per image; the
    images flagged degenerate (their size, IN and OUT are left out of the means) are counted, and a mean over
    fewer images than the row's says over how many."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    keys = [k for k in METRIC_KEYS if any(k in r["metrics"] for r in records)]
    head = ["method", "images", "degenerate", *keys, "seconds/image", "model calls/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        rows = [{**r["metrics"], "seconds": r["seconds"], "model_calls": r["model_calls"]}
                for r in records if r["method"] == m]
        stats = summarise(rows, [*keys, "seconds", "model_calls"])
        flat = sum(bool(r.get("degenerate")) for r in records if r["method"] == m)
        cells = [m, str(len(rows)), str(flat)]
        for k in [*keys, "seconds", "model_calls"]:
            cell = "-" if k not in stats else f"{stats[k]:.3f} ± {stats[k + '_std']:.3f}"
            n = int(stats.get(f"{k}_n", len(rows)))
            cells.append(cell if k not in stats or n == len(rows) else f"{cell} (n = {n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
