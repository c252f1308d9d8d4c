"""ReX: adaptive number of partitions, average / multiplicative combination, extraction search vs exhaustive scan and
the model evaluations each part spends, on hand-made black boxes."""
from collections import Counter

import pytest
import torch
from torch import nn

import explainers
import rex
from models import CallCounter, QueryEngine
from rex.search import responsibility_map
from tests.test_rex import RegionModel, _image

H = W = 16


class CornerModel(nn.Module):
    """Class 1 iff pixel (0, 0) is visible (bright): in a one-level search only the top-left child is responsible."""

    def forward(self, x):
        on = x[:, 0, 0, 0] > 0.5
        return torch.stack([(~on).float(), on.float()], 1) * 4


class CountModel(nn.Module):
    """Class 1 iff the number of visible (bright) pixels is in `passing`: any non-monotone insertion curve."""

    def __init__(self, passing: torch.Tensor) -> None:
        super().__init__()
        self.passing = passing
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        count = (x[:, 0] > 0.5).flatten(1).sum(1)
        self.seen.append(tuple(count.tolist()))
        on = self.passing[count]
        return torch.stack([(~on).float(), on.float()], 1) * 4


def _passing(*sizes: int, above: int) -> torch.Tensor:
    """Counts 0..H*W that pass: `sizes` and every count from `above` on."""
    table = torch.zeros(H * W + 1, dtype=torch.bool)
    table[list(sizes)] = True
    table[above:] = True
    return table


def _one_level_maps(seed: int, waves: list[int], size: int = H) -> torch.Tensor:
    """CornerModel's per-partition maps (N, size, size): 1 / |top-left child| on that child, drawn as the search does
    (one `split_boxes` call per wave)."""
    g = torch.Generator().manual_seed(seed)
    children = torch.cat([rex.split_boxes(torch.tensor([[0, size, 0, size]]).repeat(n, 1), g) for n in waves])
    first = children[:, 0]
    return rex.box_masks(first, size, size).double() / rex.box_area(first)[:, None, None].double()


#: the search's constants for `n_partitions` "auto", by the names these tests give them
_AUTO = {"wave": "AUTO_WAVE", "max_partitions": "AUTO_MAX", "stable_top": "AUTO_TOP", "stable_iou": "AUTO_IOU"}


@pytest.fixture
def auto_constants(monkeypatch):
    """Set some of the search's "auto" constants: `auto_constants(wave=3, ...)`."""
    def set_(**values):
        for name, value in values.items():
            monkeypatch.setattr(rex.search, _AUTO[name], value)
    return set_


def _auto(model, images, target, seed=0, **kw):
    counts = {}
    maps = responsibility_map(QueryEngine(model, 64), images, target, torch.Generator().manual_seed(seed),
                              rex.SearchSettings(n_partitions="auto", **kw), counts=counts)
    return maps, counts


def test_auto_averages_or_multiplies_the_partitions_of_each_wave(one_thread, auto_constants):
    x = torch.ones(1, 3, H, W)
    one = torch.tensor([1])
    auto_constants(wave=3, max_partitions=7, stable_iou=1.01)
    never = {"min_size": 10**6}
    per_partition = _one_level_maps(2, [3, 3, 1])
    avg, counts = _auto(CornerModel(), x, one, seed=2, **never)
    assert counts["partitions"].tolist() == [7]
    assert torch.allclose(avg[0].double(), per_partition.mean(0), rtol=1e-6, atol=0)
    mul, _ = _auto(CornerModel(), x, one, seed=2, combination="multiplicative", **never)
    product = (1 + per_partition).prod(0)
    assert torch.allclose(mul[0].double(), product / product.max(), rtol=1e-6, atol=0) and mul.max() == 1


def test_auto_with_one_full_wave_is_the_fixed_number(one_thread, auto_constants):
    x, target = _image().repeat(2, 1, 1, 1), torch.tensor([1, 1])
    fixed = responsibility_map(QueryEngine(RegionModel(True)), x, target, torch.Generator().manual_seed(4),
                               rex.SearchSettings(n_partitions=4))
    auto_constants(wave=4, max_partitions=4)
    auto, counts = _auto(RegionModel(True), x, target, seed=4)
    assert torch.equal(auto, fixed) and counts["partitions"].tolist() == [4, 4]


def test_auto_stops_each_image_when_its_top_pixels_settle(one_thread, auto_constants):
    x = torch.cat([torch.full((1, 3, H, W), 0.2), _image()])  # the first image never shows class 1: a flat map
    auto_constants(wave=3, max_partitions=7, stable_top=0.5, stable_iou=1.0)
    maps, counts = _auto(RegionModel(True), x, torch.tensor([1, 1]))
    assert counts["partitions"].tolist() == [6, 7]  # settled at the second wave / capped with a last wave of 1
    assert (maps[0] == 0).all() and maps[1].max() > 0
    again, _ = _auto(RegionModel(True), x, torch.tensor([1, 1]))
    assert torch.equal(maps, again)
    auto_constants(stable_iou=0.0)
    _, counts = _auto(RegionModel(True), x, torch.tensor([1, 1]))
    assert counts["partitions"].tolist() == [3, 3]  # IoU >= 0 holds after the first wave


def test_the_mutant_cache_spans_waves(one_thread, auto_constants):
    x = torch.ones(1, 3, 3, 3)  # split points 1 or 2 each way: 4 partitions at most, so 6 repeat some
    auto_constants(wave=1, max_partitions=6, stable_iou=1.01)
    options = {"min_size": 10**6}
    with CallCounter(model := CornerModel()) as calls:
        cached, counts = _auto(model, x, torch.tensor([1]), **options)
    plain, plain_counts = _auto(CornerModel(), x, torch.tensor([1]), cache=False, **options)
    assert torch.equal(cached, plain)
    assert counts["answered"].item() > 0 == plain_counts["answered"].item()  # one level per wave: repeats are across
    assert (counts["evaluated"] + counts["answered"]).item() == 6 * 14 == plain_counts["evaluated"].item()
    assert calls.images == counts["evaluated"].item() + 2  # and the full and blank images


def test_search_finds_a_sufficient_prefix_below_a_failing_one(one_thread):
    x = torch.ones(1, 3, H, W)
    maps = torch.rand(1, H, W, generator=torch.Generator().manual_seed(0))
    model = CountModel(_passing(40, above=100))  # 40 lies between the geometric sizes 36 and 43
    engine = QueryEngine(model, 64)
    one = torch.tensor([1])
    assert rex.extract(engine, x, maps, one, check=0).mask.sum() == 100  # the refinement alone stops at 100
    assert rex.extract(engine, x, maps, one).mask.sum() == 40 == rex.scan(engine, x, maps, one).mask.sum()
    far = QueryEngine(CountModel(_passing(33, above=200)), 64)  # 33 is further below than `check` reaches
    assert rex.extract(far, x, maps, one).mask.sum() == 200
    assert rex.extract(far, x, maps, one, check=None).mask.sum() == 33 == rex.scan(far, x, maps, one).mask.sum()


def _random_cnn(seed: int) -> nn.Module:
    """An untrained CNN without biases: the blank image gets uniform logits, so class 0, and fails other classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4, bias=False),
    ).eval()


@pytest.mark.parametrize("step", [1, 10])
def test_search_equals_the_exhaustive_scan(step, one_thread):
    g = torch.Generator().manual_seed(1)
    x = torch.ones(4, 3, H, W)
    count = torch.arange(H * W + 1)
    for _ in range(10):  # noisy insertion curves: passing more likely past a random midpoint, often not monotone
        midpoint = 40 + 180 * torch.rand(1, generator=g)
        passing = torch.rand(H * W + 1, generator=g) < torch.sigmoid((count - midpoint) / 10)
        engine = QueryEngine(CountModel(passing), 64)
        maps = torch.rand(4, H, W, generator=g)
        fast, full = (f(engine, x, maps, torch.ones(4, dtype=torch.long), step=step) for f in (rex.extract, rex.scan))
        assert torch.equal(fast.mask, full.mask) and torch.equal(fast.found, full.found)
    for seed in (0, 2):  # untrained CNNs on noise images, explaining the class each predicts (1 or 3)
        images = torch.rand(8, 3, H, W, generator=g)
        engine = QueryEngine(_random_cnn(seed), 64)
        target = engine.probabilities(images).argmax(1)
        maps = torch.rand(8, H, W, generator=g)
        fast, full = (f(engine, images, maps, target, step=step) for f in (rex.extract, rex.scan))
        assert torch.equal(fast.mask, full.mask) and torch.equal(fast.found, full.found)
        size = full.mask.flatten(1).sum(1)
        assert ((size % step == 0) | (size == H * W)).all()


def test_extraction_sends_each_prefix_once_and_counts_it(one_thread):
    x = torch.ones(2, 3, H, W)
    maps = torch.rand(2, H, W, generator=torch.Generator().manual_seed(0))
    two = torch.ones(2, dtype=torch.long)
    for extraction in (rex.extract, rex.scan):
        model = CountModel(_passing(40, above=100))
        with CallCounter(model) as calls:
            ex = extraction(QueryEngine(model, 16), x, maps, two)
        assert calls.images == ex.evaluated.sum() and ex.evaluated[0] == ex.evaluated[1]
        sizes = Counter(c for call in model.seen[1:] for c in call)  # after the full images' call
        assert set(sizes.values()) == {2} and len(sizes) == ex.evaluated[0] - 1  # same prefix sizes in both
    model = CountModel(_passing(above=1))  # nothing below the first geometric size to check: no empty model call
    assert rex.extract(QueryEngine(model), x, maps, two).evaluated.tolist() == [33, 33]
    assert all(len(call) > 0 for call in model.seen)
    model = CountModel(_passing(above=100))  # rounds of 32 sizes: 1-32, ..., 97-128 holds the first pass
    assert rex.scan(QueryEngine(model), x, maps, two, full_confidence=torch.ones(2)).evaluated.tolist() == [128, 128]


def test_rex_reports_partitions_and_every_model_evaluation(one_thread, auto_constants):
    model = RegionModel(need_both=True)
    x = _image().repeat(2, 1, 1, 1)
    auto_constants(wave=2, max_partitions=4)
    for options in ({"n_partitions": 3}, {"n_partitions": "auto"}, {"n_partitions": 3, "preset": "fast"},
                    {"n_partitions": 3, "n_explanations": 2}):
        with CallCounter(model) as calls:
            res = rex.ReX(**options).explain(model, x)
        assert calls.images == res.model_evaluated.sum()
    e = explainers.get("rex")(model, x, n_partitions="auto")
    assert {"partitions", "extraction_evaluations", "model_evaluations"} <= set(e.scores)
    assert e.scores["partitions"].tolist() == [4, 4]  # two waves at least, and the cap
    total = e.scores["model_evaluations"]
    assert torch.equal(total, 2 + e.scores["mutants_evaluated"] + e.scores["extraction_evaluations"])  # full, blank
    assert e.model_images == total.sum()
    for bad, match in (({"n_partitions": "many"}, "n_partitions"), ({"n_partitions": 0}, "n_partitions"),
                       ({"preset": "quick"}, "preset"), ({"combination": "sum"}, "combination")):
        with pytest.raises(ValueError, match=match):
            rex.ReX(**bad)
