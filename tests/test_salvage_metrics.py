"""Appendix A.1 metrics on hand-computed toy games: MIF/LIF/SRG, R-MIF/R-LIF/R-SRG, RMA/RRA, and their torchmetrics wrappers."""
import math

import pytest
import torch
from torch import nn

from explainers import relevance_mass_accuracy, relevance_rank_accuracy
from salvage import SRG, RelativeSRG, RelevanceAccuracy, insertion_curve, relative_srg_scores, srg_scores


class AdditiveGame(nn.Module):
    """Two classes on a 2x2 patch grid: logit_1(S) = sum_{i in S} a_i, logit_0 = 0, so p_1(S) = sigmoid(sum a_S)."""

    patch_grid = (2, 2)

    def __init__(self, a):
        super().__init__()
        self.a = torch.tensor(a)
        self.calls = []

    def forward(self, images, patch_mask, index):
        self.calls.append(patch_mask.shape[0])
        logit = patch_mask.float() @ self.a
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_mif_lif_srg_match_hand_computed_curves():
    game = AdditiveGame([3.0, 1.0, 0.0, -2.0])
    images, target = torch.zeros(1, 3, 8, 8), torch.tensor([1])
    maps = torch.tensor([[[3.0, 1.0], [0.0, -2.0]]])  # the exact Shapley values of the logit game
    mif = [sig(3), sig(4), sig(4), sig(2)]
    lif = [sig(-2), sig(-2), sig(-1), sig(2)]
    curve = insertion_curve(game, images, maps.flatten(1), target, most_first=True)
    assert torch.allclose(curve, torch.tensor([mif]), atol=1e-6)
    scores = srg_scores(game, images, maps, target, batch_size=3)
    assert scores["mif"].item() == pytest.approx(sum(mif) / 4, abs=1e-6)
    assert scores["lif"].item() == pytest.approx(sum(lif) / 4, abs=1e-6)
    assert scores["srg"].item() == pytest.approx((sum(mif) - sum(lif)) / 4, abs=1e-6)
    assert game.calls[-2:] == [3, 1]  # masked images are evaluated in batches
    per_class = torch.stack([-maps, maps], dim=1)  # (B, C, gh, gw): the target's map is picked
    assert srg_scores(game, images, per_class, target)["srg"].item() == pytest.approx(scores["srg"].item(), abs=1e-6)
    pixel = maps.repeat_interleave(4, 1).repeat_interleave(4, 2)  # pixel maps are averaged per patch
    assert srg_scores(game, images, pixel, target)["srg"].item() == pytest.approx(scores["srg"].item(), abs=1e-6)


def test_relative_metrics_on_a_game_decided_by_one_patch():
    game = AdditiveGame([2.0, 0.0, 0.0, 0.0])
    images, target = torch.zeros(1, 3, 8, 8), torch.tensor([1])
    maps = torch.tensor([[[5.0, 1.0], [1.0, 1.0]]])  # min-max weights: [1, 0, 0, 0]; R-LIF weights [0, 1, 1, 1]
    out = relative_srg_scores(game, images, maps, target, n_masks=16, generator=torch.Generator().manual_seed(0))
    assert out["r_mif"].item() == pytest.approx(sig(2), abs=1e-6)  # patch 0 is always drawn first
    assert out["r_lif"].item() == pytest.approx((3 * 0.5 + sig(2)) / 4, abs=1e-6)  # drawn last
    assert out["r_srg"].item() == pytest.approx(out["r_mif"].item() - out["r_lif"].item())


def test_relative_mif_averages_the_weighted_draws():
    game = AdditiveGame([1.0, 0.0, 0.0, 0.0])
    images, target = torch.zeros(1, 3, 8, 8), torch.tensor([1])
    maps = torch.tensor([[[1.0, 0.5], [0.5, 0.0]]])  # weights [1, .5, .5, 0]: P(patch 0 in a 1-subset) = 1/2
    in_first = [0.5, 1 / 2 + 0.25 * 2 / 3 * 2, 1.0, 1.0]  # P(patch 0 drawn among k) for k = 1..4
    expected = sum(p * sig(1) + (1 - p) * 0.5 for p in in_first) / 4
    out = relative_srg_scores(game, images, maps, target, n_masks=4000, generator=torch.Generator().manual_seed(1))
    assert out["r_mif"].item() == pytest.approx(expected, abs=0.005)


def test_rma_and_rra_on_a_hand_made_map():
    maps = torch.tensor([[[4.0, 1.0, -3.0, 0.0], [2.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]])
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, :2] = True
    mask[0, 0, 1, 2] = True
    assert relevance_mass_accuracy(maps, mask).item() == pytest.approx((4 + 1) / (4 + 1 + 2 + 0.5 + 0.5))
    assert relevance_rank_accuracy(maps, mask).item() == pytest.approx(2 / 3)  # top-3: 4, 2, 1 -> two inside
    patch = torch.tensor([[[[1.0, -1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]])  # (1, C=2, 2, 2), upsampled
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :2, :2] = True
    assert relevance_mass_accuracy(patch, gt, torch.tensor([0])).item() == 1.0
    assert relevance_rank_accuracy(patch, gt, torch.tensor([1])).item() == 0.0
    assert relevance_mass_accuracy(-maps.abs(), mask).isnan().all()  # no positive relevance: undefined


def test_rra_scores_ties_by_expected_share_so_pixel_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    patch = torch.randint(0, 3, (8, 4, 4), generator=g).float()  # patch-constant maps full of ties
    masks = torch.rand(8, 1, 32, 32, generator=g) > 0.7
    rra = relevance_rank_accuracy(patch, masks)
    for flip in ((-1,), (-2,), (-1, -2)):
        assert torch.allclose(relevance_rank_accuracy(patch.flip(flip), masks.flip(flip)), rra, atol=1e-6)
    assert torch.allclose(relevance_rank_accuracy(patch.transpose(-1, -2), masks.transpose(-1, -2)), rra, atol=1e-6)
    chance = masks.flatten(1).float().mean(1)
    assert torch.allclose(relevance_rank_accuracy(torch.zeros(8, 4, 4), masks), chance, atol=1e-6)
    assert torch.allclose(relevance_rank_accuracy(torch.full((8, 32, 32), 7.0), masks), chance, atol=1e-6)
    # hand-computed: K = 2, one pixel above the tie value (inside), a tie of 4 pixels (1 inside) for the last slot
    maps = torch.tensor([[[5.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])
    gt = torch.tensor([[[True, False, True], [False, False, False]]])
    assert relevance_rank_accuracy(maps, gt).item() == pytest.approx((1 + 1 * 1 / 4) / 2)


def test_undefined_ground_truth_scores_are_nan_and_counted_not_zero():
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True
    maps = torch.rand(2, 4, 4)
    maps[0, 3, 3] = float("nan")
    rma, rra = relevance_mass_accuracy(maps, mask), relevance_rank_accuracy(maps, mask)
    assert rma.isnan().all() and rra.isnan().all()  # image 0: a NaN pixel; image 1: an empty mask
    from explainers import summarise
    summary = summarise([{"rra": float(r)} for r in rra] + [{"rra": 0.5}], ["rra"])
    assert {k: v for k, v in summary.items() if k != "rra_se"} == {"rra": 0.5, "rra_std": 0.0, "rra_n": 1, "rra_nan": 2}
    assert math.isnan(summary["rra_se"])  # one value has no standard error


def test_metric_wrappers_accumulate_over_batches():
    game = AdditiveGame([3.0, 1.0, 0.0, -2.0])
    images = torch.zeros(2, 3, 8, 8)
    maps = torch.tensor([[[3.0, 1.0], [0.0, -2.0]], [[-2.0, 0.0], [1.0, 3.0]]])
    target = torch.tensor([1, 1])
    direct = srg_scores(game, images, maps, target)
    metric = SRG()
    metric.update(game, images[:1], maps[:1], target[:1])
    metric.update(game, images[1:], maps[1:], target[1:])
    out = metric.compute()
    assert out["srg"].item() == pytest.approx(direct["srg"].mean().item(), abs=1e-6)
    assert out["srg"].item() == pytest.approx(out["mif"].item() - out["lif"].item(), abs=1e-6)
    assert metric.srg_sum.dtype == torch.float64 and metric._reductions["srg_sum"].__name__ == "dim_zero_sum"
    rel = RelativeSRG(n_masks=8, seed=3)
    rel.update(game, images, maps, target)
    first = rel.compute()["r_srg"].item()
    rel.reset()
    rel.update(game, images, maps, target)
    assert rel.compute()["r_srg"].item() == first  # seeded: the same masks after a reset
    acc = RelevanceAccuracy()
    gt = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    gt[:, 0, 0, 0] = True
    acc.update(maps, gt)
    assert acc.compute()["rma"].item() == pytest.approx((3 / 4 + 0) / 2)
