"""ReX's frugal options on hand-made black boxes: rex-xai's unshared superpixel responsibility, focused refinement
(h-Shap) and the bounding boxes it starts from."""
import pytest
import torch

import rex
from models import CallCounter, QueryEngine
from rex.search import bounding_boxes, responsibility_map
from tests.test_rex import REGION_A, REGION_B, RegionModel, _image
from tests.test_rex_adaptive import CornerModel, _one_level_maps

H = W = 16


def _map(model, x, n, seed=0, **kw):
    counts = {}
    maps = responsibility_map(QueryEngine(model, 64), x, torch.ones(len(x), dtype=torch.long),
                              torch.Generator().manual_seed(seed), rex.SearchSettings(n_partitions=n, **kw),
                              counts=counts)
    return maps, counts


def _paper(**changes):
    """The paper preset with some search or extraction settings changed."""
    return rex.PRESETS["paper"].but(**changes)


def test_area_share_off_gives_each_pixel_its_superpixels_responsibility(one_thread):
    one_level = {"min_size": 10**6}
    shared, _ = _map(CornerModel(), torch.ones(1, 3, H, W), 5, seed=2, **one_level)
    whole, _ = _map(CornerModel(), torch.ones(1, 3, H, W), 5, seed=2, area_share=False, **one_level)
    per_partition = _one_level_maps(2, [5])
    assert torch.allclose(shared[0].double(), per_partition.mean(0), rtol=1e-6, atol=0)
    area = per_partition.flatten(1).amax(1).reciprocal()  # 1 / |top-left child| on that child
    assert torch.allclose(whole[0].double(), (per_partition * area[:, None, None]).mean(0), rtol=1e-6, atol=0)


def test_area_share_off_adds_the_levels(one_thread):
    shared, c1 = _map(RegionModel(True), _image(), 3, seed=1)
    whole, c2 = _map(RegionModel(True), _image(), 3, seed=1, area_share=False)
    assert torch.equal(c1["evaluated"], c2["evaluated"])  # the same search, another map
    region = torch.zeros(H, W, dtype=torch.bool)
    region[REGION_A] = region[REGION_B] = True
    assert whole[0][region].min() >= 1.0  # responsibility 1 at the first level already, more further down
    assert whole[0][~region].mean() < whole[0][region].mean()
    assert not torch.allclose(shared, whole)


def test_bounding_boxes():
    masks = torch.zeros(3, 6, 7, dtype=torch.bool)
    masks[0, 2, 3] = True
    masks[1, 1:4, 2] = masks[1, 5, 6] = True
    masks[2] = True
    assert bounding_boxes(masks).tolist() == [[2, 3, 3, 4], [1, 6, 2, 7], [0, 6, 0, 7]]


def test_focused_partitions_stay_in_the_box_of_the_top_pixels(one_thread, monkeypatch):
    x = _image()
    monkeypatch.setattr(rex.search, "FOCUS_TOP", 0.02)
    first, c_first = _map(RegionModel(False), x, 2, seed=3)
    focused, c_focus = _map(RegionModel(False), x, 5, seed=3, focus_after=2)
    later = 5 * focused[0].double() - 2 * first[0].double()  # what the three focused partitions added
    box = rex.box_masks(bounding_boxes(rex.search._top_pixels(first, 0.02).view(1, H, W))[0], H, W)
    assert later[box].max() > 0 and later[~box].abs().max() < 1e-6
    assert box.sum() < H * W
    assert torch.equal(focused, _map(RegionModel(False), x, 5, seed=3, focus_after=2)[0])


def test_focus_falls_back_to_the_whole_image_where_the_box_fails(one_thread, monkeypatch):
    x = _image()
    monkeypatch.setattr(rex.search, "FOCUS_TOP", 0.01)
    first, _ = _map(RegionModel(True), x, 1, seed=0)
    top = rex.search._top_pixels(first, 0.01).view(1, H, W)
    box = rex.box_masks(bounding_boxes(top)[0], H, W)
    assert not (box[REGION_A].all() and box[REGION_B].all())  # both regions are needed: the box alone fails
    focused, _ = _map(RegionModel(True), x, 3, seed=0, focus_after=1)
    later = 3 * focused[0].double() - first[0].double()
    assert later[~box].abs().max() > 1e-3


def test_focus_counts_its_box_test_and_keeps_the_unfocused_map(one_thread):
    x = _image().repeat(2, 1, 1, 1)
    plain, _ = _map(RegionModel(False), x, 4, seed=5)
    same, _ = _map(RegionModel(False), x, 4, seed=5, focus_after=4)
    assert torch.equal(plain, same)
    model = RegionModel(False)
    with CallCounter(model) as calls:
        res = rex.ReX(n_partitions=4, preset=_paper(focus_after=2), seed=5).explain(model, x)
    assert calls.images == res.model_evaluated.sum()
    with pytest.raises(ValueError, match="focus_after"):
        _map(RegionModel(False), x, 4, focus_after=0)


def test_tie_break_ranks_the_centre_of_a_constant_box_first():
    maps = torch.zeros(1, H, W)
    maps[0, 4:8, 4:8] = 1.0
    maps[0, 12, 12] = 0.5
    assert rex.pixel_rank(maps)[0, 4 * W + 4] == 0  # pixel index: the box's top-left corner first
    rank = rex.pixel_rank(rex.extraction.tie_broken(maps, 1.0))[0].view(H, W)
    assert set(rank[5:7, 5:7].flatten().tolist()) == {0, 1, 2, 3}  # the central 2 x 2 first
    assert rank[4:8, 4:8].max() == 15 and rank[12, 12] == 16  # a lower value never comes before a higher one
    assert rex.extraction.tie_broken(maps, 0.0) is maps


def test_tie_break_changes_the_explanation_not_the_map(one_thread):
    model = RegionModel(need_both=False)
    x = _image()
    plain = rex.ReX(n_partitions=3, seed=1, preset="paper").explain(model, x)
    tied = rex.ReX(n_partitions=3, seed=1, preset=_paper(tie_sigma=2.0)).explain(model, x)
    assert torch.equal(plain.maps, tied.maps)
    assert tied.found.all() and tied.explanations.sum() <= plain.explanations.sum()


def test_implied_outcomes_follow_monotonicity_and_leave_conflicts_undecided():
    from rex.responsibility import FULL, implied_outcomes

    known = torch.zeros(3, 16, dtype=torch.bool)
    value = torch.zeros_like(known)
    known[:, [0, FULL]] = True
    value[:, FULL] = True
    known[0, 0b0001] = value[0, 0b0001] = True  # superpixel 0 alone passes: every subset holding it passes
    known[1, 0b1110] = True  # 1, 2 and 3 without 0 fail: every subset of them fails
    value[2, 0], value[2, FULL] = True, False  # the empty image passes and the full one fails: nothing follows
    decided, outcome = implied_outcomes(known, value)
    holds_0 = (torch.arange(16) & 1) == 1
    assert decided[0, holds_0].all() and outcome[0, holds_0].all() and not decided[0, 0b0110]
    assert decided[1, ~holds_0].all() and not outcome[1, ~holds_0].any() and not decided[1, 0b0011]
    assert torch.equal(decided[2], known[2]) and torch.equal(outcome[2, [0, FULL]], torch.tensor([True, False]))


class _MonotoneScore(torch.nn.Module):
    """Class 0 iff the weighted share of visible (non-zero) pixels exceeds one half: keeping more pixels never
    loses the class, so the model is monotone in the visible set."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def forward(self, x):
        s = ((x.mean(1) > 0).float() * self.weights).sum((1, 2)) / self.weights.sum()
        return torch.stack([s - 0.5, torch.zeros_like(s)], 1)


def test_monotone_reading_gives_the_full_evaluations_maps_for_fewer_model_calls(one_thread):
    g = torch.Generator().manual_seed(0)
    model = _MonotoneScore(torch.rand(16, 16, generator=g) ** 6)  # a few heavy pixels carry the class
    x = 0.5 + 0.5 * torch.rand(3, 3, 16, 16, generator=g)
    target = torch.zeros(3, dtype=torch.long)
    runs = {}
    for monotone in (False, True):
        counts = {}
        maps = responsibility_map(QueryEngine(model, 64, mask_value=0.0), x, target, torch.Generator().manual_seed(3),
                                  rex.SearchSettings(n_partitions=6, min_size=4, monotone=monotone), counts=counts)
        runs[monotone] = maps, counts
    (full, full_counts), (mono, mono_counts) = runs[False], runs[True]
    assert full.amax() > 0 and torch.equal(mono, full)
    assert (full_counts["inferred"] == 0).all() and (mono_counts["inferred"] > 0).all()
    assert (mono_counts["evaluated"] < full_counts["evaluated"]).all()
    decided = {k: c["evaluated"] + c["answered"] + c["inferred"] for k, c in runs.items() for c in [c[1]]}
    assert torch.equal(decided[True], decided[False])
    assert (full_counts["splits"] > 0).all() and not full_counts["non_monotone"].any()
    assert "non_monotone" not in mono_counts  # the monotone reading cannot see what it did not ask


def test_non_monotone_splits_are_counted(one_thread):
    from rex.responsibility import FULL, non_monotone

    outcomes = torch.zeros(2, 16, dtype=torch.bool)
    outcomes[:, [0b0001, 0b0011, 0b0101, 0b1001, 0b0111, 0b1011, 0b1101, FULL]] = True  # superpixel 0 decides
    outcomes[1, 0b0111] = False  # ... but not when 1 and 2 are kept with it
    assert non_monotone(outcomes).tolist() == [False, True]
    weights = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))  # signed: more pixels can lose it

    class Signed(torch.nn.Module):
        def forward(self, x):
            s = (x.mean(1) * weights).sum((1, 2))
            return torch.stack([s, -s], 1)

    _, counts = _map(Signed(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), 4, min_size=4)
    assert (counts["non_monotone"] > 0).any() and (counts["non_monotone"] <= counts["splits"]).all()


def test_monotone_reading_asks_only_the_largest_undecided_mutants(one_thread):
    model, x = RegionModel(need_both=True), _image()  # regions A and B in quadrants 0 and 3 both needed
    maps, counts = _map(model, x, 1, monotone=True, min_size=1000)  # one split, not refined further
    assert (maps[0, REGION_A[0], REGION_A[1]] > 0).all() and (maps[0, REGION_B[0], REGION_B[1]] > 0).all()
    assert (maps > 0).float().mean() < 1  # this seed's split puts A and B in two of the four quadrants
    # the 4 mutants with 3 quadrants: those without 0 or 3 fail, the others pass; of the pairs only {0, 3} is
    # undecided; every single quadrant lies inside a failing mutant
    assert counts["evaluated"].item() == 5 and counts["inferred"].item() == 9
    assert torch.equal(maps, _map(model, x, 1, min_size=1000)[0])


class _BlankKeepsClass(torch.nn.Module):
    """Class 1 everywhere, more confidently when region A is visible (bright): the blank image gets the class."""

    def forward(self, x):
        a = (x[:, :, REGION_A[0], REGION_A[1]].amin((1, 2, 3)) > 0.5).float()
        return torch.stack([torch.zeros_like(a), 1 + 3 * a], 1)


def test_prune_drops_every_cell_the_class_does_not_need_least_responsible_first(one_thread):
    x = _image()
    maps = torch.zeros(1, H, W)
    maps[0, REGION_B[0], REGION_B[1]] = 1.0
    maps[0, REGION_A[0], REGION_A[1]] = 2.0  # A or B keeps the class; B's cells are tried (and dropped) before A's
    whole = rex.Extraction(mask=torch.ones(1, 1, H, W, dtype=torch.bool), found=torch.ones(1, dtype=torch.bool),
                           evaluated=torch.tensor([7]))
    engine = QueryEngine(RegionModel(need_both=False), 64, 0.0)
    counter = CallCounter(engine.model)
    with counter:
        pruned = rex.prune(engine, x, whole, maps, torch.ones(1, dtype=torch.long), cell=4,
                           full_confidence=torch.ones(1))
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[:4, :4] = True  # the cell holding A; its removal would leave nothing, so it is never tried
    assert torch.equal(pruned.mask[0, 0], expected)
    assert pruned.evaluated.item() == 7 + 15 and counter.images == 15
    need_both = rex.prune(QueryEngine(RegionModel(need_both=True), 64, 0.0), x, whole, maps,
                          torch.ones(1, dtype=torch.long), cell=4, full_confidence=torch.ones(1))
    kept = need_both.mask[0, 0]
    assert kept[REGION_A[0], REGION_A[1]].all() and kept[REGION_B[0], REGION_B[1]].all()
    assert kept.sum() == 5 * 16  # A's cell and B's four cells; every other cell dropped
    missing = rex.Extraction(mask=whole.mask, found=torch.zeros(1, dtype=torch.bool))
    untouched = rex.prune(engine, x, missing, maps, torch.ones(1, dtype=torch.long), 4, full_confidence=torch.ones(1))
    assert torch.equal(untouched.mask, whole.mask) and untouched.evaluated.item() == 0


def test_explanation_first_ranks_the_explanation_first_in_its_own_order():
    maps = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])
    explanation = torch.tensor([[[[False, True], [False, True]]]])
    first = rex.explanation_first(maps, explanation)
    assert rex.pixel_rank(first)[0].tolist() == [2, 1, 3, 0]  # 0.3 before 0.1, then 0.9 before 0.5
    assert torch.equal(first[~explanation[:, 0]], maps[~explanation[:, 0]])


def test_rex_prune_cell_gives_a_smaller_sufficient_explanation_that_leads_its_map(one_thread):
    x = _image()
    model = RegionModel(need_both=False)
    options = {"n_partitions": 3, "seed": 1, "mask_value": 0.0}
    plain = rex.ReX(preset=_paper(min_size=40), **options).explain(model, x)
    pruned = rex.ReX(preset=_paper(min_size=40, explanation_first=True), prune_cell=2, **options).explain(model, x)
    assert torch.equal(pruned.mutants_evaluated, plain.mutants_evaluated)
    assert pruned.explanations.sum() < plain.explanations.sum()
    assert pruned.extraction_evaluated.item() > plain.extraction_evaluated.item()
    kept = pruned.explanations[0, 0]
    assert kept[REGION_A[0], REGION_A[1]].all() or kept[REGION_B[0], REGION_B[1]].all()
    assert model(torch.where(kept, x, torch.zeros(())))[0].argmax() == 1
    n = int(kept.sum())
    assert torch.equal(rex.pixel_rank(pruned.maps)[0].view(H, W) < n, kept)
    with pytest.raises(ValueError, match="prune_cell"):
        rex.ReX(prune_cell=2, explanation="contrastive")
    with pytest.raises(ValueError, match="prune_cell"):
        rex.ReX(prune_cell=-1)


class _BlankLosesClass(_BlankKeepsClass):
    """`_BlankKeepsClass`, but the blank image (every pixel at the mask value 0) gets class 0."""

    def forward(self, x):
        blank = (x.flatten(1).abs().amax(1) == 0).float()
        return super().forward(x) * (1 - blank)[:, None] + torch.stack([blank, torch.zeros_like(blank)], 1)


def test_blank_fails_reads_the_blank_image_as_failing(one_thread):
    x = _image()
    read, _ = _map(_BlankKeepsClass(), x, 3, blank_fails=True)
    failing, _ = _map(_BlankLosesClass(), x, 3)
    assert read.amax() > 0 and torch.equal(read, failing)  # as if the blank image lost the class
    assert not _map(_BlankKeepsClass(), x, 3)[0].any()
    model = RegionModel(need_both=True)  # its blank image loses the class: the option changes nothing
    assert torch.equal(_map(model, x, 3, blank_fails=True)[0], _map(model, x, 3)[0])


def test_confidence_map_is_the_mean_probability_kept_minus_masked():
    conf = rex.ConfidenceMap(torch.tensor([1, 0]), 1, 3)
    visible = torch.tensor([[[True, False, True]], [[False, True, True]], [[True, True, True]]])
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    conf(torch.tensor([0, 0, 1]), visible, probs)
    # image 0, class 1: pixel 0 kept at 0.8, masked at 0.4; pixel 1 the reverse; pixel 2 never masked
    assert torch.allclose(conf.map()[0, 0], torch.tensor([0.4, -0.4, 0.0]))
    assert not conf.map()[1].any()  # one query keeping every pixel: nothing to compare
    maps = torch.tensor([[[2.0, 2.0, 1.0]]])
    mixed = rex.with_confidence(maps, torch.tensor([[[0.0, 1.0, 5.0]]]), 0.1)
    assert torch.allclose(mixed, torch.tensor([[[1.0, 1.02, 0.1]]]))  # the tie broken, the order kept


def test_rex_confidence_weight_breaks_ties_at_no_extra_evaluations(one_thread):
    x, model = _image(), RegionModel(need_both=False)
    options = {"n_partitions": 3, "seed": 1, "mask_value": 0.0, "preset": _paper(min_size=40)}
    plain = rex.ReX(**options).explain(model, x)
    graded = rex.ReX(confidence_weight=0.5, **options).explain(model, x)
    assert torch.equal(graded.model_evaluated, plain.model_evaluated)
    assert torch.equal(graded.explanations, plain.explanations)
    flat = plain.maps.flatten(1)
    unit = (flat - flat.amin()) / (flat.amax() - flat.amin())
    confidence = (graded.maps.flatten(1) - unit) / 0.5  # the confidence map, scaled to [0, 1]
    assert confidence.amin().abs() < 1e-6 and (confidence.amax() - 1).abs() < 1e-6
    region = torch.zeros(H, W, dtype=torch.bool)
    region[REGION_A] = region[REGION_B] = True
    assert confidence[0, region.flatten()].mean() > confidence[0, ~region.flatten()].mean()
    assert len(graded.maps.unique()) > len(plain.maps.unique())  # ties broken
    assert torch.equal(graded.maps, rex.ReX(confidence_weight=0.5, **options).explain(model, x).maps)
    with pytest.raises(ValueError, match="confidence_weight"):
        rex.ReX(confidence_weight=-1)
