"""rex-xai's mask values in the one masking convention (models.masking): exact pixels after masking for a number, a
colour, "min", "mean", "random", "noise" and a context image, per-image fills indexed by the mutant's image."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import rex
from models import QueryEngine, apply_mask, expand_fill, mask_fill

# two 2 x 2 images: image 0 spans 0.25..1.0 (mean 0.5625), image 1 spans 0.0..0.5 (mean 0.25)
IMAGES = torch.tensor([
    [[[0.25, 0.5], [0.75, 1.0]], [[0.5, 0.5], [0.5, 0.5]], [[0.25, 0.25], [0.75, 1.0]]],
    [[[0.0, 0.5], [0.5, 0.0]], [[0.25, 0.25], [0.25, 0.25]], [[0.0, 0.5], [0.5, 0.0]]],
])
# mutants: image 1, image 0, image 1; only the top-left pixel kept
INDEX = torch.tensor([1, 0, 1])
VISIBLE = torch.tensor([[True, False], [False, False]]).expand(3, 2, 2)
REMOVED = ~VISIBLE[:, None].expand(3, 3, 2, 2)


def _masked(value, generator=None):
    fill = mask_fill(value=value, images=IMAGES, generator=generator)
    mutants = apply_mask(IMAGES, VISIBLE, fill, INDEX)
    assert torch.equal(mutants[:, :, 0, 0], IMAGES[INDEX, :, 0, 0])  # the kept pixel is untouched
    return fill, mutants


def _removed(mutants: torch.Tensor, mutant: int, channel: int) -> list[float]:
    return mutants[mutant, channel][~VISIBLE[mutant]].tolist()


def test_a_number_and_a_colour_fill_every_removed_pixel():
    _, mutants = _masked(0.125)
    assert mutants[REMOVED].unique().tolist() == [0.125]
    _, mutants = _masked((0.125, 0.25, 0.375))
    for m in range(3):
        assert [_removed(mutants, m, c) for c in range(3)] == [[0.125] * 3, [0.25] * 3, [0.375] * 3]


def test_min_and_mean_are_each_images_own_over_all_channels():
    fill, mutants = _masked("min")
    assert fill.flatten().tolist() == [0.25, 0.0]
    assert [mutants[m][REMOVED[m]].unique().tolist() for m in range(3)] == [[0.0], [0.25], [0.0]]
    fill, mutants = _masked("mean")
    assert fill.flatten().tolist() == [0.5625, 0.25]
    assert [mutants[m][REMOVED[m]].unique().tolist() for m in range(3)] == [[0.25], [0.5625], [0.25]]


def test_random_is_one_grey_level_per_image_between_its_min_and_max():
    u = torch.rand((), generator=torch.Generator().manual_seed(7))
    fill, mutants = _masked("random", torch.Generator().manual_seed(7))
    expected = [0.25 + u.item() * 0.75, 0.0 + u.item() * 0.5]
    assert fill.flatten().tolist() == pytest.approx(expected, abs=1e-7)
    assert mutants[1][REMOVED[1]].unique().tolist() == pytest.approx([expected[0]], abs=1e-7)
    assert mutants[0][REMOVED[0]].unique().tolist() == pytest.approx([expected[1]], abs=1e-7)
    assert torch.equal(mask_fill(value="random", images=IMAGES), mask_fill(value="random", images=IMAGES))


def test_noise_is_seeded_uniform_noise_shared_by_the_images():
    noise = torch.rand((1, 3, 2, 2), generator=torch.Generator().manual_seed(5))
    fill, mutants = _masked("noise", torch.Generator().manual_seed(5))
    assert torch.equal(fill, noise)
    for m in range(3):
        assert torch.equal(mutants[m][REMOVED[m]], noise[0][REMOVED[m]])
    engine = QueryEngine(nn.Identity(), mask_value="noise", seed=5)
    assert torch.equal(engine.blank(IMAGES), noise.expand(2, 3, 2, 2))
    assert not torch.equal(QueryEngine(nn.Identity(), mask_value="noise", seed=6).blank(IMAGES), engine.blank(IMAGES))


def test_a_context_image_fills_removed_pixels_per_image():
    context = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2) / 32
    _, mutants = _masked(context)
    for m, i in enumerate(INDEX.tolist()):
        assert torch.equal(mutants[m][REMOVED[m]], context[i][REMOVED[m]])
    _, mutants = _masked(context[1])  # one context (C, H, W) for every image
    for m in range(3):
        assert torch.equal(mutants[m][REMOVED[m]], context[1][REMOVED[m]])
    assert torch.equal(QueryEngine(nn.Identity(), mask_value=context).blank(IMAGES), context)


def test_a_context_of_the_wrong_size_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\) does not fit images of shape \(2, 3, 2, 2\)"):
        mask_fill(value=torch.zeros(3, 4, 4), images=IMAGES)
    with pytest.raises(ValueError, match=r"\(3, 3, 2, 2\) does not fit images of shape \(2, 3, 2, 2\)"):
        QueryEngine(nn.Identity(), mask_value=torch.zeros(3, 3, 2, 2)).blank(IMAGES)
    with pytest.raises(ValueError, match="named ones are min, mean, random, noise"):
        QueryEngine(nn.Identity(), mask_value="context")
    with pytest.raises(ValueError, match="computed from the images"):
        mask_fill(value="mean")


def test_colour_fills_stay_a_lerp_with_the_colour_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    images, visible = torch.rand(4, 3, 8, 8, generator=g), torch.rand(6, 8, 8, generator=g) < 0.5
    index = torch.tensor([3, 0, 0, 2, 1, 3])
    colour = torch.tensor([0.485, 0.456, 0.406])
    kept = images[index]
    expected = torch.lerp(colour.view(1, 3, 1, 1).expand_as(kept), kept, visible[:, None].float())
    assert torch.equal(apply_mask(images, visible, colour, index), expected)
    assert torch.equal(expected, torch.where(visible[:, None], kept, colour.view(1, 3, 1, 1)))
    assert expand_fill(colour, images, index).stride() == (0, 1, 0, 0)  # a colour is broadcast, never copied


def test_per_image_fills_follow_the_mutant_index_across_query_chunks():
    class Pixels(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    index = torch.tensor([1, 0, 1, 1, 0])
    visible = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(2)) < 0.5
    for value in ("min", "mean", "random", "noise", torch.rand(2, 3, 2, 2)):
        engine = QueryEngine(Pixels(), max_batch=2, mask_value=value, seed=1)
        expected = engine.probabilities(apply_mask(IMAGES, visible, engine.fill_for(IMAGES), index))
        assert torch.equal(engine.masked_probabilities(IMAGES, index, visible), expected)


def test_models_own_named_mask_value_and_rex_with_it_are_reproducible():
    class Bright(nn.Module):
        mask_value = "mean"

        def forward(self, x):
            s = x[:, 0, 2:6, 2:6].mean((1, 2)) * 8 - 4
            return torch.stack([-s, s], 1)

    images = torch.zeros(2, 3, 16, 16)
    images[:, :, 2:6, 2:6] = 1.0
    assert QueryEngine(Bright()).blank(images).unique().tolist() == [16 / 256]
    fine = {"n_partitions": 3, "preset": rex.PRESETS["paper"].but(min_size=4)}
    first = rex.ReX(**fine, mask_value="noise", seed=2).explain(Bright(), images)
    again = rex.ReX(**fine, mask_value="noise", seed=2).explain(Bright(), images)
    assert torch.equal(first.maps, again.maps) and torch.equal(first.explanations, again.explanations)
    by_model = rex.ReX(**fine).explain(Bright(), images)
    assert by_model.target.tolist() == [1, 1] and bool(by_model.found.all())
