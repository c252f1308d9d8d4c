"""Honest sufficiency: the fully masked image's probability on every record, degenerate explanations flagged and
left out of the means, and the confidence requirement (auto: 0.8 for two-class models)."""
import math

import pytest
import torch
from torch import nn

from evaluation.suite import score
from explainers.metrics import degenerate, resolve_min_confidence
from evaluation.table import comparison_table
from explainers import Explanation


class Brightness(nn.Module):
    """Two classes: logit_0 = 4 x mean brightness + 0.04, logit_1 = 0, so a black (fully masked) image gives class 0
    at p = 0.51 and a white one at p = 0.98."""

    mask_value = 0.0

    def forward(self, x):
        s = 4 * x.mean((1, 2, 3)) + 0.04
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_auto_requirement_and_the_degenerate_rule():
    assert resolve_min_confidence("auto", 2) == 0.8 and resolve_min_confidence("auto", 6) == 0.0
    assert resolve_min_confidence("0.5", 6) == 0.5
    with pytest.raises(ValueError, match="min_confidence"):
        resolve_min_confidence(1.5, 2)
    blank = torch.tensor([[0.51, 0.49], [0.48, 0.52], [0.2, 0.8]])
    full = torch.tensor([0.98, 0.98, 0.98])
    target = torch.zeros(3, dtype=torch.long)
    # image 0: the blank image already gives class 0; image 1: within the 0.05 margin of it; image 2: far from it
    assert degenerate(blank, full, target, 0.0).tolist() == [True, True, False]
    assert degenerate(blank, full, target, 0.8).tolist() == [False, False, False]  # 0.51 < 0.8 x 0.98 - 0.05


def test_score_flags_degenerate_explanations_and_the_table_leaves_them_out():
    model = Brightness()
    images = torch.ones(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    e = Explanation(target=torch.zeros(2, dtype=torch.long), maps=maps)
    metrics, _, _ = score(e, {"classifier": model}, images, {}, steps=4, min_confidence=0.0)
    assert metrics["degenerate"].tolist() == [True, True] and metrics["size"].isnan().all()
    assert metrics["blank_probability"] == pytest.approx(torch.sigmoid(torch.tensor(0.04)).repeat(2), abs=1e-4)
    strict, _, _ = score(e, {"classifier": model}, images, {}, steps=4, min_confidence=0.8)
    assert not strict["degenerate"].any() and (strict["size"] > 0).all()
    records = [{"method": "m", "degenerate": d, "seconds": 1.0, "model_calls": 1.0,
                "metrics": {"size": s, "insertion": 0.5}} for d, s in ((True, math.nan), (False, 0.2), (False, 0.4))]
    row = comparison_table(records).splitlines()[2]
    assert row.startswith("| m | 3 | 1 | 0.300 ± 0.100 (n = 2) | 0.500 ± 0.000 |")
