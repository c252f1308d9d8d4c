"""The comparison table: one row per method, mean ± standard error of every metric over images, cost per image."""
from __future__ import annotations

import math
from typing import Any

from evaluation.suite import METRIC_KEYS
from explainers.metrics import summarise

#: The cost columns every row has beside the metrics.
COST_KEYS = ("seconds", "model_calls")


def method_summaries(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The metric keys present (table order) and, per method, `summarise` of its images' metrics and costs plus
    `images` (records) and `degenerate` (how many were flagged)."""
    keys = [k for k in METRIC_KEYS if any(k in r["metrics"] for r in records)]
    out: dict[str, dict[str, float]] = {}
    for m in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == m]
        rows = [{**r["metrics"], **{k: r[k] for k in COST_KEYS}} for r in mine]
        out[m] = {**summarise(rows, [*keys, *COST_KEYS]), "images": len(mine),
                  "degenerate": sum(bool(r.get("degenerate")) for r in mine)}
    return keys, out


def mean_se(stats: dict[str, float], key: str) -> str:
    """`mean ± se` of one summarised key ("-" when absent; the mean alone for a single value and for the costs,
    which are each batch's share), and `(n = k)` when the mean is over fewer images than the method's (degenerate or
    undefined images left out)."""
    if key not in stats:
        return "-"
    se = math.nan if key in COST_KEYS else stats[f"{key}_se"]
    cell = f"{stats[key]:.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}")
    n = int(stats[f"{key}_n"])
    return cell if n == stats["images"] else f"{cell} (n = {n})"


def comparison_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, mean ± standard error of each metric over images, seconds and model calls per
    image; the images flagged degenerate (their size, IN and OUT are left out of the means) are counted."""
    keys, summaries = method_summaries(records)
    head = ["method", "images", "degenerate", *keys, "seconds/image", "model calls/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, stats in summaries.items():
        cells = [m, str(stats["images"]), str(stats["degenerate"]), *(mean_se(stats, k) for k in [*keys, *COST_KEYS])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean ± standard error over images; costs are each batch's share per image\n"
