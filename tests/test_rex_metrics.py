"""ReX metrics (section 6) on hand-computed cases: size, insertion / deletion AUC, IN, OUT, the score summary."""
import torch
from torch import nn

import rex
from explainers import ScoreSummary, fraction_inside, fraction_outside, ground_truth_metrics


class BrightModel(nn.Module):
    """Class-1 logit = mean brightness of the top-left 2 x 2 block x 4 (class 0 logit 0)."""

    def forward(self, x):
        s = x[:, :, :2, :2].mean((1, 2, 3)) * 4
        return torch.stack([torch.zeros_like(s), s], 1)


def test_in_and_out_fractions():
    e = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    e[0, 0, 0, :] = True  # 4 pixels
    gt = torch.zeros_like(e)
    gt[0, 0, :, 0] = True  # shares pixel (0, 0)
    occ = torch.zeros_like(e)
    occ[0, 0, 0, 2:] = True  # covers 2 of the 4
    assert torch.allclose(fraction_inside(e, gt), torch.tensor([0.25]))
    assert torch.allclose(fraction_outside(e, occ), torch.tensor([0.5]))
    empty = torch.zeros_like(e)
    assert fraction_inside(empty, gt).isnan().all() and fraction_outside(empty, occ).isnan().all()


def test_size_and_curves_on_a_hand_computed_case():
    x = torch.ones(1, 3, 4, 4)
    maps = torch.arange(16, 0, -1).float().view(1, 4, 4)  # row-major ranking: (0,0), (0,1), ..., (3,3)
    target = torch.tensor([1])
    size, mask = rex.explanation_size(BrightModel(), x, maps, target)
    # class 1 needs logit s > 0: a single visible pixel of the block gives s = 1 > 0
    assert torch.allclose(size, torch.tensor([1 / 16])) and mask[0, 0, 0, 0] and mask.sum() == 1
    ins, dele, ins_auc, del_auc = rex.insertion_deletion(BrightModel(), x, maps, target, steps=4)
    # at fractions 0, 1/4, ..., 1 the inserted pixels are the first 0, 4, 8, 12, 16 in row-major order:
    # the block's top row is in after 4 pixels (s = 2), the whole block after 8 (s = 4)
    p = torch.sigmoid(torch.tensor([0.0, 2.0, 4.0, 4.0, 4.0]))
    p_full = torch.sigmoid(torch.tensor(4.0))
    assert torch.allclose(ins[0], p / p_full, atol=1e-6)
    q = torch.sigmoid(torch.tensor([4.0, 2.0, 0.0, 0.0, 0.0]))  # deletion removes pixels in the same order
    assert torch.allclose(dele[0], q / p_full, atol=1e-6)
    expected = torch.trapezoid(p / p_full, dx=0.25)
    assert torch.allclose(ins_auc, expected.view(1), atol=1e-6)
    assert torch.allclose(del_auc, torch.trapezoid(q / p_full, dx=0.25).view(1), atol=1e-6)


def test_score_summary_accumulates_mean_and_std():
    metric = ScoreSummary(("size", "in", "out"))
    metric.update({"size": torch.tensor([0.1, 0.3]), "in": torch.tensor([1.0, 0.0])})
    metric.update({"size": torch.tensor([0.2])})
    out = metric.compute()
    assert torch.allclose(out["size"], torch.tensor(0.2))
    assert torch.allclose(out["size_std"], torch.tensor((2 / 300) ** 0.5))
    assert torch.allclose(out["in"], torch.tensor(0.5)) and "out" not in out
    assert metric._reductions["size_sum"] is not None  # states are synced across DDP ranks


def test_score_summary_leaves_out_and_counts_nan():
    metric = ScoreSummary(("rra",))
    metric.update({"rra": torch.tensor([0.5, float("nan"), 1.0])})
    out = metric.compute()
    assert torch.allclose(out["rra"], torch.tensor(0.75)) and int(out["rra_n"]) == 2 and int(out["rra_nan"]) == 1


def test_section6_and_ground_truth_metrics_run_together():
    x = torch.ones(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    gt[:, :, :2, :2] = True
    values, explanation, curves = rex.rex_metrics(BrightModel(), x, maps, torch.tensor([1, 1]), steps=4)
    assert curves.shape == (2, 2, 5)
    # the AUCs are the trapezoid areas of the returned curves over fractions 0, 1/4, ..., 1
    area = ((curves[..., 1:] + curves[..., :-1]) / 2).sum(-1) / 4
    assert torch.allclose(area[0], values["insertion"]) and torch.allclose(area[1], values["deletion"])
    values.update(ground_truth_metrics(maps, explanation, {"mask": gt, "occluder_mask": ~gt}))
    # a sufficient explanation of this model always contains a block pixel
    assert (values["in"] > 0).all() and torch.allclose(values["out"], values["in"])
    assert set(values) == {"size", "insertion", "deletion", "in", "out", "rra", "rma"}
