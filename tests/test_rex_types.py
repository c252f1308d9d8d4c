"""rex-xai's explanation types on hand-made black boxes: spatial, contrastive, complete, spotlights with Dice."""
import pytest
import torch
from torch import nn

import explainers
import rex
from models import CallCounter, QueryEngine
from rex.explainer import EXTRACTORS
from rex.spatial import _radii

H = W = 16
REGION_A = (slice(1, 4), slice(1, 4))
REGION_B = (slice(10, 13), slice(10, 13))
REGION_D = (slice(10, 13), slice(1, 4))
ONE = torch.tensor([1])


def _visible(x, region):
    return x[:, :, region[0], region[1]].amin((1, 2, 3)) > 0.5


class EitherModel(nn.Module):
    """Class 1 (always with the same confidence) iff region A or region B is visible."""

    def forward(self, x):
        on = _visible(x, REGION_A) | _visible(x, REGION_B)
        return torch.stack([(~on).float(), on.float()], 1) * 4


class DistractedModel(nn.Module):
    """Class-1 logit 2 a + 2 b - d - 1.5 (class 0: 0): A and B raise it, each visible pixel of D lowers it."""

    def forward(self, x):
        d = (x[:, 0, REGION_D[0], REGION_D[1]] > 0.5).float().mean((1, 2))
        logit = 2 * _visible(x, REGION_A).float() + 2 * _visible(x, REGION_B).float() - d - 1.5
        return torch.stack([torch.zeros_like(logit), logit], 1)


def _image(distractor: bool = False):
    x = torch.full((1, 3, H, W), 0.2)
    for region in (REGION_A, REGION_B) + ((REGION_D,) if distractor else ()):
        x[:, :, region[0], region[1]] = 1.0
    return x


def _region(*regions):
    m = torch.zeros(H, W, dtype=torch.bool)
    for r in regions:
        m[r] = True
    return m


def _which(mask):
    """"A" or "B" where `mask` (H, W) is exactly that region, else None."""
    return next((name for name, r in (("A", REGION_A), ("B", REGION_B)) if torch.equal(mask, _region(r))), None)


def _ranked_map():
    """A ranked above B above the background, D last."""
    maps = torch.zeros(1, H, W)
    maps[0][REGION_A] = 2.0
    maps[0][REGION_B] = 1.0
    maps[0][REGION_D] = -1.0
    return maps


def test_spatial_radii_grow_twenty_percent_and_at_least_one_pixel():
    assert _radii(25, 0.2, 100.0, None) == [25, 30, 36, 43, 51, 61, 73, 87, 104]
    assert _radii(25, 0.2, 100.0, 4) == [25, 30, 36, 43]
    assert _radii(1, 0.2, 4.0, None) == [1, 2, 3, 4]


def test_spatial_circle_grows_until_it_keeps_the_class():
    model = EitherModel()
    x = _image()
    centre = torch.tensor([[2, 2]])
    full = torch.ones(1)
    # radius 1 misses A's corners; the next circle (radius 2) holds all of A
    circle, found, tried = rex.sufficient_circles(QueryEngine(model), x, torch.tensor([0]), centre, ONE, full,
                                                  radius=1)
    assert found.item() and torch.equal(circle, rex.circle_masks(centre, torch.tensor([2]), H, W))
    assert tried.tolist() == [14]  # all circles up to the first covering the image (radius 19) go to the model at once
    far = torch.tensor([[7, 7]])
    _, found, tried = rex.sufficient_circles(QueryEngine(model), x, torch.tensor([0]), far, ONE, full, radius=1,
                                             expansions=2)
    assert not found.item() and tried.tolist() == [2]
    with pytest.raises(ValueError, match="expansions >= 1"):
        rex.sufficient_circles(QueryEngine(model), x, torch.tensor([0]), far, ONE, full, expansions=0)


def test_spatial_explanation_stays_inside_the_circle_around_the_maximum():
    model = EitherModel()
    x = _image()
    maps = torch.zeros(1, H, W)
    maps[0][REGION_A] = 1.0
    maps[0, 2, 2] = 2.0  # the maximum, at A's centre
    maps[0][REGION_B] = 1.5
    engine = QueryEngine(model)
    glob = rex.extract(engine, x, maps, ONE)
    assert glob.mask[0, 0].sum() == 10 and glob.mask[0, 0][REGION_B].all()  # A's centre, then all of B
    spatial = rex.spatial_extract(engine, x, maps, ONE, radius=2)
    assert spatial.found.item() and torch.equal(spatial.mask[0, 0], _region(REGION_A))
    # a first circle covering the whole image (the tool stops there without an explanation) gives the global one
    wide = rex.spatial_extract(engine, x, maps, ONE)
    assert torch.equal(wide.mask, glob.mask) and wide.found.item()


def test_contrastive_is_sufficient_and_its_removal_changes_the_class():
    model = EitherModel()
    x = _image()
    engine = QueryEngine(model)
    # A alone keeps the class (sufficient), but B still holds it once A is removed; B's first ranked pixel is enough
    # to break B, so A and that pixel are sufficient and necessary
    con = rex.contrastive_extract(engine, x, _ranked_map(), ONE, step=1)
    assert con.found.item() and con.removed_class.tolist() == [0]
    expected = _region(REGION_A)
    expected[10, 10] = True
    assert torch.equal(con.mask[0, 0], expected)
    assert torch.equal(con.sufficient[0, 0], _region(REGION_A))
    # the tool's default grid: 10 pixels per step, where the first step is both
    con10 = rex.contrastive_extract(engine, x, _ranked_map(), ONE)
    assert torch.equal(con10.mask, con.mask) and torch.equal(con10.sufficient, con.mask)


def test_contrastive_needs_the_full_images_confidence():
    model = DistractedModel()
    x = _image(distractor=True)
    # A alone keeps class 1 and its removal flips it, but with less confidence than the full image: B is needed too
    con = rex.contrastive_extract(QueryEngine(model), x, _ranked_map(), ONE, step=1)
    assert torch.equal(con.sufficient[0, 0], _region(REGION_A))
    assert torch.equal(con.mask[0, 0], _region(REGION_A, REGION_B))


def test_complete_adds_the_lowest_ranked_pixels_until_the_confidence_is_restored():
    model = DistractedModel()
    x = _image(distractor=True)
    engine = QueryEngine(model)
    # A and B alone are more confident than the full image; all 9 D pixels (ranked last) bring it back to 2 decimals
    com = rex.complete_extract(engine, x, _ranked_map(), ONE, step=1)
    assert com.found.item()
    assert torch.equal(com.contrastive[0, 0], _region(REGION_A, REGION_B))
    assert torch.equal(com.mask[0, 0], _region(REGION_A, REGION_B, REGION_D))
    full = torch.softmax(model(x), 1)[0, 1]
    restored = torch.softmax(model(torch.where(com.mask, x, 0.0)), 1)[0, 1]
    assert round(restored.item(), 2) == round(full.item(), 2)
    eight = com.mask.clone()
    eight[0, 0, 10, 1] = False
    assert round(torch.softmax(model(torch.where(eight, x, 0.0)), 1)[0, 1].item(), 2) != round(full.item(), 2)
    # a contrastive explanation that already has the full confidence is complete itself
    same = rex.complete_extract(QueryEngine(EitherModel()), _image(), _ranked_map(), ONE, step=1)
    assert torch.equal(same.mask, same.contrastive) and same.found.item()


def test_types_batched_equal_one_image_at_a_time():
    model = DistractedModel()
    x = torch.cat([_image(distractor=True), _image(), _image(distractor=True)])
    maps = torch.cat([_ranked_map(), _ranked_map(), torch.rand(1, H, W, generator=torch.Generator().manual_seed(0))])
    target = torch.ones(3, dtype=torch.long)
    engine = QueryEngine(model, max_batch=5)
    for fn in (rex.spatial_extract, rex.contrastive_extract, rex.complete_extract):
        kw = {"radius": 3, "step": 3} if fn is rex.spatial_extract else {"step": 3}
        batch = fn(engine, x, maps, target, candidates=4, **kw)
        for i in range(3):
            one = fn(engine, x[i:i + 1], maps[i:i + 1], target[i:i + 1], candidates=7, **kw)
            assert torch.equal(batch.mask[i], one.mask[0]) and batch.found[i] == one.found[0], (fn.__name__, i)


def test_every_type_counts_its_model_evaluations():
    model = DistractedModel()
    x = torch.cat([_image(distractor=True), _image()])
    maps = torch.cat([_ranked_map(), torch.rand(1, H, W, generator=torch.Generator().manual_seed(1))])
    target = torch.ones(2, dtype=torch.long)
    calls = {
        "spatial": lambda e: rex.spatial_extract(e, x, maps, target, radius=3),
        "contrastive": lambda e: rex.contrastive_extract(e, x, maps, target, candidates=5),
        "complete": lambda e: rex.complete_extract(e, x, maps, target, step=2, candidates=5),
        "spotlights": lambda e: rex.spotlight_explanations(e, x, maps, target, torch.Generator().manual_seed(0), k=3,
                                                           radius=3, expansions=2),
    }
    for name, call in calls.items():
        with CallCounter(model) as counter:
            ex = call(QueryEngine(model, max_batch=1000))
        assert ex.evaluated.shape == (2,) and counter.images == int(ex.evaluated.sum()), name


def test_dice_coefficients_and_separation_follow_the_tool():
    a, b = _region(REGION_A), _region(REGION_B)
    a_plus = a.clone()
    a_plus[0, 0] = True
    masks = torch.stack([a, a_plus, b, torch.zeros_like(a)])[None, :, None]
    dice = rex.dice_coefficients(masks)[0]
    assert dice[0, 1].item() == pytest.approx(2 * 9 / 19) and dice[0, 2] == 0 and dice[3, 3] == 0
    found = torch.ones(1, 4, dtype=torch.bool)
    # A and A+ clash: the largest compatible sets are {A, B} and {A+, B}; the smaller total area wins
    assert rex.dice_separation(masks, found)[0].tolist() == [True, False, True, False]
    assert rex.dice_separation(masks, found, permitted_overlap=0.95)[0].tolist() == [True, True, True, False]
    # equal areas: the tool's order, the lexicographically last index tuple ({1, 2} before {0, 2})
    twins = torch.stack([a, a, b])[None, :, None]
    assert rex.dice_separation(twins, torch.ones(1, 3, dtype=torch.bool))[0].tolist() == [False, True, True]
    # explanations not found are never kept
    assert rex.dice_separation(masks, torch.tensor([[False, True, True, True]]))[0].tolist() == [
        False, True, True, False]
    with pytest.raises(ValueError, match="at most 16"):
        rex.dice_separation(torch.zeros(1, 17, 1, H, W, dtype=torch.bool), torch.ones(1, 17, dtype=torch.bool))


def test_spotlights_find_both_regions_and_dice_keeps_one_of_each():
    model = EitherModel()
    x = _image()
    maps = torch.zeros(1, H, W)
    maps[0][REGION_A] = 2.0
    maps[0][REGION_B] = 1.0

    def run(seed, overlap=0.0):
        return rex.spotlight_explanations(QueryEngine(model), x, maps, ONE, torch.Generator().manual_seed(seed), k=6,
                                          permitted_overlap=overlap, radius=3, expansions=2)

    sp = run(0)
    assert sp.found[0].tolist() == [True, True, False, False, False, False]
    assert sorted(_which(m) for m in sp.mask[0, :2, 0]) == ["A", "B"]  # in the order the Dice rule's ties give
    assert not sp.mask[0, 2:].any()
    again = run(0)
    assert torch.equal(again.mask, sp.mask) and torch.equal(again.found, sp.found)
    # a permitted Dice coefficient of 1 keeps every explanation found, repeats included
    loose = run(0, overlap=1.0)
    assert loose.found[0].sum() > 2
    assert {_which(m) for m in loose.mask[0, loose.found[0], 0]} == {"A", "B"}


def test_rex_dispatches_every_type_on_its_own_maps():
    model = DistractedModel()
    x = torch.cat([_image(distractor=True), _image()])
    for kind, fn in EXTRACTORS.items():
        with CallCounter(model) as counter:
            res = rex.ReX(preset="paper", n_partitions=4, seed=3, explanation=kind).explain(model, x)
        assert counter.images == int(res.model_evaluated.sum()), kind
        step = 1 if kind in ("global", "spatial") else 10  # the exact prefix, or rex-xai's chunk of 10 pixels
        direct = fn(QueryEngine(model, 16), x, res.maps, res.target, full_confidence=res.confidence, step=step)
        assert torch.equal(res.explanations, direct.mask) and torch.equal(res.found, direct.found), kind
        assert torch.equal(res.extraction_evaluated, direct.evaluated), kind
        again = rex.ReX(preset="paper", n_partitions=4, seed=3, explanation=kind).explain(model, x)
        assert torch.equal(again.explanations, res.explanations), kind
    e = explainers.get("rex")(model, x, n_partitions=4, seed=3, explanation="contrastive")
    assert torch.equal(e.explanation, rex.ReX(n_partitions=4, seed=3, explanation="contrastive").explain(model, x)
                       .explanations)


def test_rex_dice_rule_is_deterministic_with_a_seed():
    model = EitherModel()
    x = _image()
    cfg = dict(n_partitions=4, n_explanations=4, overlap_rule="dice")
    with CallCounter(model) as counter:
        r1 = rex.ReX(seed=1, **cfg).explain(model, x)
    assert counter.images == int(r1.model_evaluated.sum())
    r2 = rex.ReX(seed=1, **cfg).explain(model, x)
    assert r1.explanations.shape == (1, 4, 1, H, W)
    assert torch.equal(r1.explanations, r2.explanations) and torch.equal(r1.found, r2.found)
    assert r1.found[0, 0]


def test_unknown_types_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown ReX explanation type 'local'"):
        rex.ReX(explanation="local")
    with pytest.raises(ValueError, match="unknown ReX overlap rule 'jaccard'"):
        rex.ReX(overlap_rule="jaccard")
    with pytest.raises(ValueError, match="more than 1 needs explanation 'global'"):
        rex.ReX(explanation="contrastive", n_explanations=3)
    with pytest.raises(ValueError, match="unknown option.*'spotlights'"):
        rex.ReX(spotlights=3)
    with pytest.raises(ValueError, match="step must be at least 1"):
        rex.contrastive_extract(QueryEngine(EitherModel()), _image(), _ranked_map(), ONE, step=0)
