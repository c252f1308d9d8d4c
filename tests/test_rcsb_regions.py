"""RCSB regions (rcsb.regions): top-cell regions from attribution maps, mask files, bridge training masks."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from explainers.regions import cell_region, default_cell_size, mask_file_region
from explainers.regions import box_region, make_region, parse_box_spec
from rcsb import box_mask, freeform_mask, mask_bank, training_masks


pytestmark = pytest.mark.usefixtures("one_thread")


def _ranked_map(size: int = 64, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A pixel map whose c x c cell sums are a random permutation (no ties), and that permutation (gh, gw)."""
    g = size // c
    rank = torch.randperm(g * g, generator=torch.Generator().manual_seed(seed)).view(g, g).float()
    pixel = rank.repeat_interleave(c, 0).repeat_interleave(c, 1)
    sign = torch.where(torch.rand(size, size, generator=torch.Generator().manual_seed(seed + 1)) < 0.5, -1.0, 1.0)
    return (pixel * sign)[None], rank  # signs flipped at random: |map| is what counts


@pytest.mark.parametrize("area", [0.05, 0.1, 0.3, 0.5, 1.0])
def test_cell_region_keeps_the_top_cells_covering_the_area(area):
    maps, rank = _ranked_map()
    region = cell_region(maps, 64, area=area)  # default cells: 64 / 16 = 4 px
    n_cells = 16 * 16
    k = math.ceil(area * n_cells - 1e-9)
    assert region.shape == (1, 1, 64, 64) and region.dtype == torch.bool
    assert int(region.sum()) == k * 4 * 4  # exactly the k cells needed, in pixels
    kept = region[0, 0, ::4, ::4]  # one pixel per cell
    assert torch.equal(kept, rank >= n_cells - k)  # ... and they are the highest ones
    assert region.float().mean() >= area - 1e-9


def test_cell_region_minimum_one_cell_and_default_cell_size():
    maps, rank = _ranked_map(size=32, c=2)
    region = cell_region(maps, 32, area=1e-4)
    assert int(region.sum()) == 2 * 2  # one 2 x 2 cell (c = 32 / 16)
    top = (rank == rank.max()).nonzero()[0]
    assert region[0, 0, 2 * top[0], 2 * top[1]]
    assert default_cell_size(256) == 16 and default_cell_size(64) == 4 and default_cell_size(224) == 14
    assert default_cell_size(300) == 15  # 300 / 16 = 18 does not divide 300: the largest smaller side that does


def test_cell_region_sums_absolute_values_in_cells_and_upsamples_patch_maps():
    maps = torch.zeros(2, 16, 16)
    maps[0, 0, 0] = -5.0  # one strong negative pixel beats a weak positive cell: |map| counts
    maps[0, 8:12, 8:12] = 0.1
    maps[1, 12:16, 0:4] = 1.0
    region = cell_region(maps, 16, cells=4, area=1 / 16)
    assert region[0, 0, :4, :4].all() and int(region[0].sum()) == 16
    assert region[1, 0, 12:, :4].all() and int(region[1].sum()) == 16
    grid = torch.zeros(1, 4, 4)  # a patch-grid map (occlusion, ViT patches) at a coarser resolution
    grid[0, 1, 2] = 1.0
    up = cell_region(grid, 32, cells=8, area=1 / 16)
    assert up[0, 0, 8:16, 16:24].all() and int(up.sum()) == 64


def test_cell_region_errors():
    with pytest.raises(ValueError, match="does not divide"):
        cell_region(torch.rand(1, 30, 30), 30, cells=4)
    with pytest.raises(ValueError, match="area"):
        cell_region(torch.rand(1, 32, 32), 32, area=0.0)
    with pytest.raises(ValueError, match="NaN"):
        cell_region(torch.full((1, 32, 32), float("nan")), 32)


# --------------------------------------------------------------------------- mask files


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_mask_file_region_reads_nonzero_pixels(tmp_path):
    arr = np.zeros((32, 48), dtype=np.uint8)  # height 32, width 48
    arr[4:10, 20:30] = 255
    region = mask_file_region(_png(tmp_path / "m.png", arr), (32, 48))
    assert region.shape == (1, 1, 32, 48) and region.dtype == torch.bool
    assert torch.equal(region[0, 0], torch.from_numpy(arr > 0))
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[1, 2, 0] = 7  # any nonzero channel counts
    assert int(mask_file_region(_png(tmp_path / "rgb.png", rgb), 32).sum()) == 1


def test_mask_file_of_the_wrong_size_or_empty_gives_clear_errors(tmp_path):
    path = _png(tmp_path / "small.png", np.full((16, 24), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"24x16 .* images are 32x32"):
        mask_file_region(path, 32)
    empty = _png(tmp_path / "empty.png", np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="marks no pixel"):
        mask_file_region(empty, 32)
    with pytest.raises(FileNotFoundError):
        mask_file_region(tmp_path / "missing.png", 32)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        mask_file_region(tmp_path / "junk.png", 32)


# --------------------------------------------------------------------------- training masks


def test_training_masks_shapes_families_and_determinism():
    masks = training_masks(12, 32, torch.Generator().manual_seed(0))
    again = training_masks(12, 32, torch.Generator().manual_seed(0))
    assert masks.shape == (12, 1, 32, 32) and masks.dtype == torch.bool
    assert torch.equal(masks, again)
    assert bool(masks.flatten(1).any(1).all())
    assert training_masks({"image": torch.zeros(3, 3, 16, 16)}, 16, torch.Generator()).shape == (3, 1, 16, 16)


@pytest.mark.parametrize("family, low, high", [("freeform1020", 0.1, 0.2), ("freeform2030", 0.2, 0.3),
                                               ("center", 0.25, 0.25), ("cells", 0.05, 0.3 + 4 / 1024)])
def test_each_training_mask_family_covers_its_area(family, low, high):
    g = torch.Generator().manual_seed(1)
    cover = training_masks(16, 32, g, families=(family,)).float().mean((1, 2, 3))
    assert bool((cover >= low - 1e-6).all()) and bool((cover <= high + 1e-6).all()), cover


def test_training_masks_mix_the_families():
    masks = training_masks(40, 16, torch.Generator().manual_seed(0))[:, 0]
    centre = (masks == box_mask(16)).flatten(1).all(1)  # the 8 x 8 centre box
    cover = masks.float().mean((1, 2))
    assert 0 < int(centre.sum()) < 40  # some centre boxes, some other shapes
    assert bool((cover[~centre] < 0.2).any()) and bool((cover[~centre] > 0.25).any())


def test_freeform_strokes_are_thin_shapes_not_boxes():
    mask = freeform_mask(64, 0.1, 0.2, torch.Generator().manual_seed(5))
    ys, xs = mask.nonzero(as_tuple=True)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert int(mask.sum()) < 0.8 * int(box)
    with pytest.raises(ValueError, match="low"):
        freeform_mask(32, 0.3, 0.2, torch.Generator())
    with pytest.raises(ValueError, match="unknown mask families"):
        training_masks(2, 32, torch.Generator(), families=("blobs",))


def test_mask_bank_is_the_same_for_any_number_of_workers_and_matches_per_index_draws():
    one = mask_bank(256, 16, seed=3, workers=0)
    two = mask_bank(256, 16, seed=3, workers=2)
    assert one.shape == (256, 1, 16, 16) and one.dtype == torch.bool
    assert torch.equal(one, two)
    g = torch.Generator().manual_seed(3 * 1_000_003 + 17)
    assert torch.equal(one[17], training_masks(1, 16, g)[0])
    assert not torch.equal(one[0], one[1])
    with pytest.raises(ValueError, match="at least one mask"):
        mask_bank(0, 16)


# --------------------------------------------------------------------------- regions with room: the dilated box


def _hand_mask() -> torch.Tensor:
    """Two 12 x 16 masks: an L shape with a stray pixel (rows 3-8, columns 4-9), and a blob at the top-left corner."""
    mask = torch.zeros(2, 1, 12, 16, dtype=torch.bool)
    mask[0, 0, 3:7, 5] = True
    mask[0, 0, 6, 5:10] = True
    mask[0, 0, 8, 4] = True
    mask[1, 0, 0:2, 0:3] = True
    return mask


def _rect(h, w, top, bottom, left, right):
    out = torch.zeros(1, h, w, dtype=torch.bool)
    out[:, top:bottom + 1, left:right + 1] = True
    return out


def test_box_region_is_the_dilated_bounding_box_clipped_to_the_image():
    mask = _hand_mask()
    box = box_region(mask)
    assert box.shape == (2, 1, 12, 16) and box.dtype == torch.bool
    assert torch.equal(box[0], _rect(12, 16, 3, 8, 4, 9)) and torch.equal(box[1], _rect(12, 16, 0, 1, 0, 2))
    assert bool((box | ~mask).all())  # the box holds the whole mask
    grown = box_region(mask, 2)  # 2 px on every side, clipped at the image's edges
    assert torch.equal(grown[0], _rect(12, 16, 1, 10, 2, 11)) and torch.equal(grown[1], _rect(12, 16, 0, 3, 0, 4))
    frac = box_region(mask, 0.25)  # a quarter of the side: 3 rows above and below, 4 columns left and right
    assert torch.equal(frac[0], _rect(12, 16, 0, 11, 0, 13)) and torch.equal(frac[1], _rect(12, 16, 0, 4, 0, 6))
    assert bool(box_region(mask, 1.0).all())
    assert torch.equal(box_region(mask[:, 0].float()), box)  # (B, H, W) and 0/1 masks too


def test_box_region_errors_and_the_spec_syntax():
    mask = _hand_mask()
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] is empty"):
        box_region(torch.cat([mask[:1], torch.zeros_like(mask[:1])]))
    with pytest.raises(ValueError, match="fractional margin"):
        box_region(mask, 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        box_region(mask, -1)
    assert parse_box_spec("box") == 0 and parse_box_spec("box:4") == 4 and isinstance(parse_box_spec("box:4"), int)
    assert parse_box_spec("box:0.1") == 0.1 and parse_box_spec("box:1.0") == 1.0
    assert parse_box_spec("truth") is None and parse_box_spec("auto:rex") is None and parse_box_spec("boxes.png") is None
    for bad in ("box:", "box:wide", "box:-2", "box:1.5"):
        with pytest.raises(ValueError, match="margin"):
            parse_box_spec(bad)


def test_make_region_resolves_box_specs_from_the_object_mask_and_passes_the_rest_on():
    mask = _hand_mask()
    images = torch.rand(2, 3, 12, 16)
    batch = {"image": images, "mask": mask}
    predicted = torch.zeros(2, dtype=torch.long)
    model = torch.nn.Identity()
    assert torch.equal(make_region("box:2", model, images, predicted, batch), box_region(mask, 2))
    assert torch.equal(make_region("box", model, images, predicted, batch), box_region(mask))
    assert torch.equal(make_region("truth", model, images, predicted, batch), mask)
    with pytest.raises(ValueError, match="'box:0.1' needs the data's ground-truth masks"):
        make_region("box:0.1", model, images, predicted, {"image": images})
