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
                              torch.Generator().manual_seed(seed), n, counts=counts, **kw)
    return maps, counts


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


def test_focused_partitions_stay_in_the_box_of_the_top_pixels(one_thread):
    x = _image()
    first, c_first = _map(RegionModel(False), x, 2, seed=3)
    focused, c_focus = _map(RegionModel(False), x, 5, seed=3, focus_after=2, focus_top=0.02)
    later = 5 * focused[0].double() - 2 * first[0].double()  # what the three focused partitions added
    box = rex.box_masks(bounding_boxes(rex.search._top_pixels(first, 0.02).view(1, H, W))[0], H, W)
    assert later[box].max() > 0 and later[~box].abs().max() < 1e-6
    assert box.sum() < H * W
    assert torch.equal(focused, _map(RegionModel(False), x, 5, seed=3, focus_after=2, focus_top=0.02)[0])


def test_focus_falls_back_to_the_whole_image_where_the_box_fails(one_thread):
    x = _image()
    first, _ = _map(RegionModel(True), x, 1, seed=0)
    top = rex.search._top_pixels(first, 0.01).view(1, H, W)
    box = rex.box_masks(bounding_boxes(top)[0], H, W)
    assert not (box[REGION_A].all() and box[REGION_B].all())  # both regions are needed: the box alone fails
    focused, _ = _map(RegionModel(True), x, 3, seed=0, focus_after=1, focus_top=0.01)
    later = 3 * focused[0].double() - first[0].double()
    assert later[~box].abs().max() > 1e-3


def test_focus_counts_its_box_test_and_keeps_the_unfocused_map(one_thread):
    x = _image().repeat(2, 1, 1, 1)
    plain, _ = _map(RegionModel(False), x, 4, seed=5)
    same, _ = _map(RegionModel(False), x, 4, seed=5, focus_after=4)
    assert torch.equal(plain, same)
    model = RegionModel(False)
    with CallCounter(model) as calls:
        res = rex.ReX(n_partitions=4, focus_after=2, seed=5).explain(model, x)
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
    plain = rex.ReX(n_partitions=3, seed=1).explain(model, x)
    tied = rex.ReX(n_partitions=3, seed=1, tie_sigma=2.0).explain(model, x)
    assert torch.equal(plain.maps, tied.maps)
    assert tied.found.all() and tied.explanations.sum() <= plain.explanations.sum()


def test_rank_area_share_returns_one_rules_maps_and_extracts_by_the_others(one_thread):
    model, x = RegionModel(need_both=True), _image()
    shared = rex.ReX(n_partitions=4, seed=5).explain(model, x)
    whole = rex.ReX(n_partitions=4, seed=5, area_share=False).explain(model, x)
    mixed = rex.ReX(n_partitions=4, seed=5, rank_area_share=False).explain(model, x)
    assert not torch.equal(shared.explanations, whole.explanations)  # the two rules rank pixels differently here
    assert torch.equal(mixed.maps, shared.maps)
    assert torch.equal(mixed.explanations, whole.explanations)
    assert torch.equal(mixed.model_evaluated, whole.model_evaluated)  # the second map costs no model evaluation
    assert torch.equal(rex.ReX(n_partitions=4, seed=5, rank_area_share=True).explain(model, x).explanations,
                       shared.explanations)
