"""Maskable classifiers: exact patch removal for ViTs, pixel-baseline masking for CNNs, clear errors."""
import pytest
import torch

from models.maskable import _count_groups
from models import MaskableClassifier, build_classifier, create_backbone, fixed_fraction_masks, mask_fill, uniform_size_masks
from tests.conftest import TINY_VIT


def _perturb_masked(model, images, mask):
    pixels = model.pixel_mask(mask, images.shape[-2:])
    return torch.where(pixels, images, torch.rand_like(images))


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "vit_tiny_convpatch16", "vit_tiny_deepstem8"])
def test_vit_masked_patches_do_not_change_any_logit(backbone):
    torch.manual_seed(0)
    model = build_classifier(**{**TINY_VIT, "backbone": backbone}).eval()
    torch.manual_seed(1)
    images = torch.rand(6, 3, 32, 32)
    mask = uniform_size_masks(6, model.num_patches, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(images, mask)
        after = model(_perturb_masked(model, images, mask), mask)
        unmasked = model(_perturb_masked(model, images, mask))
    assert (before - after).abs().max() <= 1e-5
    assert (before - unmasked).abs().max() > 1e-3  # without the mask, the same edit does change the logits


def test_stem_activation_is_chosen_by_name():
    acts = [type(m) for m in create_backbone("vit_tiny_convpatch16", 3, stem_act="relu").patch_embed.proj]
    assert acts.count(torch.nn.ReLU) == 2 and torch.nn.GELU not in acts
    acts = [type(m) for m in create_backbone("vit_tiny_deepstem8", 3).patch_embed.proj]
    assert acts.count(torch.nn.GELU) == 3 and torch.nn.ReLU not in acts


def test_vit_masking_equals_dropping_the_tokens(tiny_classifier):
    """Attention masking of keys is the same as running the ViT on the visible tokens only."""
    model = tiny_classifier.model
    vit = model.backbone
    images = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, model.num_patches, dtype=torch.bool)
    mask[0, [0, 5, 6, 15]] = True
    with torch.no_grad():
        tokens = vit._pos_embed(vit.patch_embed((images - model.mean) / model.std))
        keep = torch.cat([torch.ones(vit.num_prefix_tokens, dtype=torch.bool), mask[0]])
        dropped = vit.forward_head(vit.norm(vit.blocks(tokens[:, keep])))
        assert torch.allclose(model(images, mask), dropped, atol=1e-5)


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "vit_tiny_convpatch16", "vit_tiny_deepstem8"])
def test_dropping_masked_tokens_equals_attention_masking(backbone):
    """The fast path runs only the visible patches (rows grouped by count, padding masked): the same logits."""
    torch.manual_seed(0)
    model = build_classifier(**{**TINY_VIT, "backbone": backbone}).eval()
    assert model.drops_tokens
    images = torch.rand(40, 3, 32, 32)
    mask = uniform_size_masks(40, model.num_patches, torch.Generator().manual_seed(0))
    mask[0], mask[1] = False, True
    with torch.no_grad():
        fast = model(images, mask)
        slow = model._forward_attention_masked((images - model.mean) / model.std, mask)
    assert (fast - slow).abs().max() <= 1e-5


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "vit_tiny_deepstem8", "resnet10t"])
@pytest.mark.parametrize("masks_per_image", [1, 8])
def test_index_rows_equal_the_repeated_images(backbone, masks_per_image):
    """forward(images, masks, index) is forward(images[index], masks); a per-patch stem embeds each image once when
    that is cheaper than the rows' visible patches (8 masks of each image), not otherwise (1 mask each)."""
    torch.manual_seed(0)
    if backbone == "resnet10t":
        model = build_classifier(backbone, num_classes=6, img_size=32, patch_size=8).eval()
    else:
        model = build_classifier(**{**TINY_VIT, "backbone": backbone}).eval()
    images = torch.rand(3, 3, 32, 32)
    index = torch.arange(3).repeat_interleave(masks_per_image)
    mask = uniform_size_masks(len(index), model.num_patches, torch.Generator().manual_seed(0))
    embedded = []
    if model.is_vit:
        model.backbone.patch_embed.register_forward_hook(lambda mod, args, out: embedded.append(args[0].shape[0]))
    with torch.no_grad():
        shared = model(images, mask, index)
        repeated = model(images[index], mask)
    assert (shared - repeated).abs().max() <= 1e-5
    if backbone == "vit_tiny_deepstem8":
        assert embedded == ([3] if masks_per_image == 8 else [])  # else only `forward_patches` on visible patches
    with pytest.raises(ValueError, match="len\\(index\\)"):
        model(images, mask[:-1], index)
    with pytest.raises(ValueError, match="needs a patch_mask"):
        model(images, None, index)
    with pytest.raises(ValueError, match="there are 3 images"):
        model(images, mask, index + 1)
    last = (index == 2).nonzero().flatten()
    with torch.no_grad():  # rows of the last image only: only that image is embedded
        assert torch.allclose(model(images, mask[last], index[last]), repeated[last], atol=1e-5)
    if backbone == "vit_tiny_deepstem8":
        assert embedded == ([3, 1] if masks_per_image == 8 else [])


def test_count_groups_cover_every_row_once_with_bounded_padding():
    counts = torch.tensor([16, 0, 3, 3, 9, 1, 12, 16, 5] * 8)
    groups = _count_groups(counts)
    assert torch.equal(torch.cat(groups), torch.argsort(counts, stable=True))  # every row once, ascending counts
    assert len(groups) > 1 and all(len(rows) >= 16 for rows in groups[:-1])
    for rows in groups:  # past its first 16 rows, a group holds only counts within 1.25 x its first + 1
        c = counts[rows]
        assert (c[16:] <= 1.25 * c[0] + 1).all()


def test_all_visible_mask_equals_no_mask(tiny_classifier):
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        full = tiny_classifier.model(images)
        masked = tiny_classifier.model(images, torch.ones(3, 16, dtype=torch.bool))
    assert torch.allclose(full, masked, atol=1e-5)


def test_cnn_masking_sets_pixels_to_the_baseline():
    torch.manual_seed(0)
    model = build_classifier("resnet10t", num_classes=4, img_size=32, patch_size=8).eval()
    assert model.patch_grid == (4, 4) and not model.is_vit
    images = torch.rand(2, 3, 32, 32)
    mask = fixed_fraction_masks(2, 16, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(images, mask)
        after = model(_perturb_masked(model, images, mask), mask)
        mean = model.mean.expand_as(images)  # the one masking convention: the model's normalisation mean
        baseline = model(torch.where(model.pixel_mask(mask, (32, 32)), images, mean))
        model.mask_value = 0.0  # a per-model override, seen by every method that masks through models.masking
        black = model(torch.where(model.pixel_mask(mask, (32, 32)), images, torch.zeros_like(images)))
        assert torch.allclose(model(images, mask), black, atol=1e-6)
    assert (before - after).abs().max() <= 1e-5
    assert torch.allclose(before, baseline, atol=1e-6)
    assert mask_fill(model).flatten().tolist() == [0.0]


def test_small_cnn_subtracts_half_and_masks_to_zero_input():
    """The benchmarks' CNN: [0, 1] images minus 0.5, so a pixel masked to the model's mean colour enters as 0."""
    torch.manual_seed(0)
    model = build_classifier("small_cnn", num_classes=6, img_size=32, patch_size=8).eval()
    assert not model.is_vit and model.patch_grid == (4, 4) and model.backbone.num_classes == 6
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [1.0] * 3
    images = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model(images, mask), model.backbone(torch.zeros_like(images)), atol=1e-6)
        assert torch.allclose(model(images), model.backbone(images - 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_backbone("small_cnn", 6, pretrained=True)


def test_mask_samplers_sizes():
    g = torch.Generator().manual_seed(0)
    masks = uniform_size_masks(20000, 16, g)
    sizes = masks.sum(1)
    assert sizes.min() == 0 and sizes.max() == 16
    assert (torch.bincount(sizes, minlength=17).float() / 20000 - 1 / 17).abs().max() < 0.01
    per_patch = masks[sizes == 8].float().mean(0)
    assert (per_patch - 0.5).abs().max() < 0.05
    assert (fixed_fraction_masks(5, 16, 0.25, g).sum(1) == 12).all()


def test_bad_model_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone 'vit_tiny_patch99'.*vit_"):
        create_backbone("vit_tiny_patch99", 3)
    with pytest.raises(ValueError, match="class-token pooling"):
        MaskableClassifier(create_backbone("vit_tiny_patch16_224", 3, img_size=32, global_pool="avg"))
    with pytest.raises(ValueError, match="img_size.*patch_size"):
        build_classifier("resnet10t", num_classes=4, img_size=32)
    with pytest.raises(ValueError, match="unknown stem 'wide'.*'plain', 'deep'"):
        create_backbone("vit_tiny_convpatch16", 3, stem="wide")
    with pytest.raises(ValueError, match="unknown stem_act 'tanh'.*'gelu', 'relu'"):
        create_backbone("vit_tiny_convpatch16", 3, stem_act="tanh")
    model = build_classifier(**{**TINY_VIT})
    with pytest.raises(ValueError, match="patch_mask must have shape"):
        model(torch.rand(2, 3, 32, 32), torch.ones(2, 7, dtype=torch.bool))
