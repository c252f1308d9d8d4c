"""ReX: responsibility (Def. 4.4 / Alg. 1) on hand-made black boxes, refinement, extraction, determinism."""
import pytest
import torch
from torch import nn

import explainers
import rex
from models import CallCounter, QueryEngine, apply_mask
from rex.responsibility import VISIBLE, responsibility
from rex.search import responsibility_map

H = W = 16
# four quadrants of a 16 x 16 image; regions A and B sit inside quadrants 0 and 3
REGION_A = (slice(1, 4), slice(1, 4))
REGION_B = (slice(10, 13), slice(10, 13))


class RegionModel(nn.Module):
    """Class 1 iff regions A and/or B are visible (bright), else class 0."""

    def __init__(self, need_both: bool) -> None:
        super().__init__()
        self.need_both = need_both

    def forward(self, x):
        a = x[:, :, REGION_A[0], REGION_A[1]].amin((1, 2, 3)) > 0.5
        b = x[:, :, REGION_B[0], REGION_B[1]].amin((1, 2, 3)) > 0.5
        on = (a & b) if self.need_both else (a | b)
        return torch.stack([(~on).float(), on.float()], 1) * 4


def _image():
    x = torch.full((1, 3, H, W), 0.2)
    x[:, :, REGION_A[0], REGION_A[1]] = 1.0
    x[:, :, REGION_B[0], REGION_B[1]] = 1.0
    return x


def _quadrant_outcomes(model):
    """Outcomes of all 16 visible-quadrant subsets under the quadrant partition (bit j = quadrant j)."""
    x = _image()
    quads = torch.zeros(4, H, W, dtype=torch.bool)
    quads[0, :8, :8] = quads[1, :8, 8:] = quads[2, 8:, :8] = quads[3, 8:, 8:] = True
    visible = (VISIBLE[:, :, None, None] & quads[None]).any(1)
    probs = QueryEngine(model).masked_probabilities(x, torch.zeros(16, dtype=torch.long), visible)
    return (probs.argmax(1) == 1)[None]


def test_responsibility_either_region_is_half():
    r = responsibility(_quadrant_outcomes(RegionModel(need_both=False)))
    assert torch.allclose(r, torch.tensor([[0.5, 0.0, 0.0, 0.5]]))


def test_responsibility_both_regions_needed_is_one():
    r = responsibility(_quadrant_outcomes(RegionModel(need_both=True)))
    assert torch.allclose(r, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))


def test_tool_rule_gives_one_over_subset_size():
    # need both: passing non-trivial subsets are {0,3}, {0,1,3}, {0,2,3}
    r = responsibility(_quadrant_outcomes(RegionModel(need_both=True)), rule="tool")
    assert torch.allclose(r, torch.tensor([[0.5 + 2 / 3, 1 / 3, 1 / 3, 0.5 + 2 / 3]]))


def test_single_necessary_superpixel():
    outcomes = VISIBLE[:, 2][None]  # class kept iff superpixel 2 is visible
    assert torch.allclose(responsibility(outcomes), torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_map_concentrates_on_the_regions():
    model = RegionModel(need_both=True)
    with CallCounter(model) as bb:
        maps = responsibility_map(QueryEngine(model, max_batch=64), _image(), torch.tensor([1]),
                                  torch.Generator().manual_seed(0), rex.SearchSettings(n_partitions=8))
    region = torch.zeros(H, W, dtype=torch.bool)
    region[REGION_A] = region[REGION_B] = True
    assert maps[0][region].mean() > 3 * maps[0][~region].mean()
    # all mutants of a level share calls: far fewer calls than mutants
    assert bb.images > 10 * bb.calls


def test_extraction_is_sufficient_and_minimal_in_prefix_order():
    model = RegionModel(need_both=True)
    x = _image()
    maps = torch.rand(1, H, W, generator=torch.Generator().manual_seed(3))
    ex = rex.extract(QueryEngine(model), x, maps, torch.tensor([1]), candidates=4)
    assert ex.found.all()
    rank = rex.pixel_rank(maps)[0]
    keep = ex.mask[0, 0].flatten()
    k = int(keep.sum())
    assert torch.equal(keep, rank < k)  # a prefix of the ranking
    masked = torch.where(ex.mask, x, 0.0)
    assert model(masked).argmax(1).item() == 1  # sufficient
    shorter = torch.where((rank < k - 1).view(1, 1, H, W), x, 0.0)
    assert model(shorter).argmax(1).item() == 0  # one pixel less fails
    # the region pixels are the last of A and B in the ranking: the minimal prefix ends at the last one
    region = torch.zeros(H, W, dtype=torch.bool)
    region[REGION_A] = region[REGION_B] = True
    assert k == int(rank[region.flatten()].max()) + 1


def test_extraction_ties_are_deterministic():
    maps = torch.zeros(1, H, W)
    assert torch.equal(rex.pixel_rank(maps)[0], torch.arange(H * W))


def test_multiple_explanations_are_disjoint():
    model = RegionModel(need_both=False)
    x = _image()
    maps = torch.zeros(1, H, W)
    maps[0][REGION_A] = 2.0
    maps[0][REGION_B] = 1.0
    mx = rex.multiple_explanations(QueryEngine(model), x, maps, torch.tensor([1]), k=3)
    assert mx.found[0].tolist() == [True, True, False]
    a, b = mx.mask[0, 0, 0], mx.mask[0, 1, 0]
    assert a[REGION_A].all() and a.sum() == 9 and b[REGION_B].all() and not (a & b).any()


def test_rex_is_deterministic_and_registered():
    model = RegionModel(need_both=True)
    x = _image().repeat(2, 1, 1, 1)
    with CallCounter(model) as c1:
        r1 = rex.ReX(n_partitions=4, seed=5).explain(model, x)
    with CallCounter(model) as c2:
        r2 = rex.ReX(n_partitions=4, seed=5, max_batch=7).explain(model, x)
    assert torch.equal(r1.maps, r2.maps) and torch.equal(r1.explanations, r2.explanations)
    assert c1.calls < c2.calls
    assert not torch.equal(r1.maps, rex.ReX(n_partitions=4, seed=6).explain(model, x).maps)
    spec = explainers.get("rex")
    assert spec.access == "black"
    e = spec(model, x, n_partitions=4, seed=5)
    assert e.maps.shape == (2, H, W) and torch.equal(e.maps, r1.maps)
    assert torch.equal(e.explanation, r1.explanations) and e.model_calls == c1.calls
    with pytest.raises(ValueError, match="unknown option.*iterations"):
        spec(model, x, iterations=3)


def test_split_distributions_produce_partitions():
    boxes = torch.tensor([[0, 16, 0, 16], [3, 9, 2, 30]])
    for dist, args in (("uniform", ()), ("binom", (0.5,)), ("betabinom", (2.0, 2.0))):
        children = rex.split_boxes(boxes, torch.Generator().manual_seed(0), dist, args)
        masks = rex.box_masks(children, 40, 40)
        assert torch.equal(masks.sum(1), rex.box_masks(boxes, 40, 40).long())  # disjoint cover of the parent
        assert (rex.box_area(children) > 0).all()


def test_split_offsets_are_each_boxs_own_inverse_cdf():
    from scipy import stats

    from rex.partition import _split_offsets

    sizes = torch.tensor([0, 1, 2, 3, 7, 7, 16, 40, 16, 3])
    u = torch.rand(len(sizes), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for dist, args in (("binom", (0.3,)), ("betabinom", (3.0, 3.0))):
        got = _split_offsets(sizes, u, dist, args)
        for size, draw, offset in zip(sizes.tolist(), u.tolist(), got.tolist()):
            if size < 2:
                assert offset == 0
                continue
            law = stats.binom(size - 2, *args) if dist == "binom" else stats.betabinom(size - 2, *args)
            cdf = law.cdf(range(size - 1))
            assert offset == 1 + min(int((cdf < draw).sum()), size - 2)


def test_quadrant_labels_match_the_child_boxes():
    boxes = torch.tensor([[0, 16, 0, 16], [3, 9, 2, 30], [5, 6, 7, 8]])  # the last one is too small to split
    children = rex.split_boxes(boxes, torch.Generator().manual_seed(1))
    labels = rex.quadrant_labels(children, 40, 40)
    masks = rex.box_masks(children, 40, 40)
    for j in range(4):
        assert torch.equal(labels == j, masks[:, j])
    assert torch.equal(labels == 4, ~rex.box_masks(boxes, 40, 40))


def test_mask_value_defaults_to_the_models_normalisation_mean():
    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1))

        def forward(self, x):
            return x.flatten(1)[:, :2]

    images = torch.ones(1, 3, 2, 2)
    visible = torch.tensor([[[True, False], [False, False]]])
    mutant = apply_mask(images, visible, QueryEngine(Normalised()).fill, torch.tensor([0]))
    assert mutant[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert mutant[0, :, 1, 1].tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert QueryEngine(nn.Identity()).fill.flatten().tolist() == [0.0]
    assert QueryEngine(Normalised(), mask_value=0.5).blank(images).unique().tolist() == [0.5]
    with pytest.raises(ValueError, match="one number or one per channel"):
        QueryEngine(nn.Identity(), mask_value=[0.1, 0.2])


def test_the_mutant_cache_answers_exactly_what_the_model_would():
    from models.queries import QueryEngine
    from rex.search import responsibility_map

    g = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 12, 12, generator=g)

    class Linear(torch.nn.Module):
        def forward(self, x):
            s = (x.mean(1) * weights[0]).sum((1, 2))
            return torch.stack([s, -s], 1)

    images = torch.rand(3, 3, 12, 12, generator=g)
    target = torch.zeros(3, dtype=torch.long)
    counts: dict = {}
    cached = responsibility_map(QueryEngine(Linear()), images, target, torch.Generator().manual_seed(1),
                                rex.SearchSettings(min_size=4), counts=counts)
    plain = responsibility_map(QueryEngine(Linear()), images, target, torch.Generator().manual_seed(1),
                               rex.SearchSettings(min_size=4, cache=False), counts=(plain_counts := {}))
    assert torch.equal(cached, plain)
    assert (counts["answered"] > 0).all() and (plain_counts["answered"] == 0).all()  # small boxes repeat masks
    assert torch.equal(counts["evaluated"] + counts["answered"], plain_counts["evaluated"])
