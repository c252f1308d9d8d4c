"""Built-in interventions on tiny hand-made images: x = 0 identity, x = 1 full effect, pixels outside the mask kept."""
import colorsys

import numpy as np
from PIL import Image
import pytest
import torch
from torchvision.io import write_png

from datamodules import CueConfig, SyntheticScenes
from interventions import (
    AlphaBlend,
    BackgroundReplacement,
    Brightness,
    CueStrength,
    HueShift,
    PrecomputedSequence,
    hsv_to_rgb,
    load_sequences,
    rgb_to_hsv,
)


def _image():
    """One 2x2 image: pixel (0,0) red, (0,1) grey 0.2, (1,0) blue-ish, (1,1) white; mask = top row."""
    img = torch.tensor([[[1.0, 0.2], [0.1, 1.0]], [[0.0, 0.2], [0.2, 1.0]], [[0.0, 0.2], [0.8, 1.0]]])[None]
    mask = torch.tensor([[True, True], [False, False]])[None, None]
    return img, mask


def test_alpha_blend_colour_and_texture():
    img, mask = _image()
    edit = AlphaBlend(mask, (0.0, 1.0, 0.5))
    assert torch.equal(edit(img, 0.0), img)
    full = edit(img, 1.0)
    assert torch.allclose(full[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.allclose(full[0, :, 0, 1], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(full[..., 1, :], img[..., 1, :])
    half = edit(img, 0.5)
    assert torch.allclose(half[0, :, 0, 1], torch.tensor([0.1, 0.6, 0.35]))
    texture = torch.arange(12, dtype=torch.float32).view(3, 2, 2) / 12
    patched = AlphaBlend(mask, texture)(img, 1.0)
    assert torch.equal(patched[0, :, 0], texture[:, 0]) and torch.equal(patched[..., 1, :], img[..., 1, :])


def test_per_image_x():
    img, mask = _image()
    batch, masks = img.repeat(2, 1, 1, 1), mask.repeat(2, 1, 1, 1)
    out = AlphaBlend(masks, (0.0, 0.0, 0.0))(batch, torch.tensor([0.0, 1.0]))
    assert torch.equal(out[0], img[0])
    assert torch.equal(out[1, :, 0], torch.zeros(3, 2)) and torch.equal(out[1, :, 1], img[0, :, 1])
    with pytest.raises(ValueError):
        AlphaBlend(masks, (0.0, 0.0, 0.0))(batch, torch.tensor([0.0, 0.5, 1.0]))


def test_background_replacement():
    img, fg = _image()
    edit = BackgroundReplacement(fg, (0.5, 0.5, 0.5))
    assert torch.equal(edit(img, 0.0), img)
    full = edit(img, 1.0)
    assert torch.equal(full[..., 0, :], img[..., 0, :])
    assert torch.equal(full[..., 1, :], torch.full((1, 3, 2), 0.5))


def test_brightness():
    img, mask = _image()
    dark = Brightness(mask, 0.0)
    assert torch.equal(dark(img, 0.0), img)
    assert torch.equal(dark(img, 1.0)[..., 0, :], torch.zeros(1, 3, 2))
    assert torch.allclose(dark(img, 0.5)[0, :, 0, 1], torch.tensor([0.1, 0.1, 0.1]))
    bright = Brightness(mask, 2.0)(img, 1.0)
    assert torch.allclose(bright[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # red saturates at 1
    assert torch.allclose(bright[0, :, 0, 1], torch.tensor([0.4, 0.4, 0.4]))
    assert torch.equal(bright[..., 1, :], img[..., 1, :])


def test_hue_shift():
    img, mask = _image()
    third = HueShift(mask, 1 / 3)
    assert torch.allclose(third(img, 0.0), img, atol=1e-6)
    full = third(img, 1.0)
    assert torch.allclose(full[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # red -> green
    assert torch.allclose(full[0, :, 0, 1], img[0, :, 0, 1], atol=1e-6)  # grey has no hue
    assert torch.allclose(full[..., 1, :], img[..., 1, :], atol=1e-6)
    assert torch.allclose(HueShift(mask, 0.5)(img, 1.0)[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]), atol=1e-6)


def test_hsv_matches_colorsys():
    colours = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    hsv = rgb_to_hsv(colours)
    expected = [colorsys.rgb_to_hsv(*colours[0, :, i, j].tolist()) for i in range(5) for j in range(7)]
    assert torch.allclose(hsv[0].permute(1, 2, 0).reshape(-1, 3), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), colours, atol=1e-6)


def test_cue_strength_equals_the_datamodule_render():
    scenes = SyntheticScenes("test", 3, img_size=16, cue=CueConfig(kind="patch"), progress=False)
    edit = CueStrength.from_dataset(scenes, [0, 2])
    images = torch.stack([scenes[0]["image"], scenes[2]["image"]])
    for a in (0.0, 0.3, 1.0):
        rendered = torch.stack([scenes.render(i, cue_strength=a)["image"] for i in (0, 2)])
        assert torch.allclose(edit(images, a), rendered, atol=1 / 255 + 1e-6)  # both renders round to 8 bit
    mask = torch.stack([scenes.render(i)["cue_mask"] for i in (0, 2)]).expand_as(images)
    assert torch.equal(edit(images, 1.0)[~mask], edit(images, 0.0)[~mask])
    cue_pixels = edit(images, 1.0).permute(0, 2, 3, 1)[mask[:, 0]]
    assert torch.allclose(cue_pixels, scenes.cue_color.expand_as(cue_pixels))


def test_precomputed_sequence_interpolates_frames():
    frames = torch.linspace(0, 1, 5).view(1, 5, 1, 1, 1).expand(2, 5, 3, 2, 2).clone()
    frames[1] = 1 - frames[1]
    seq = PrecomputedSequence(frames)
    images = torch.zeros(2, 3, 2, 2)
    assert torch.equal(seq(images, 0.25), frames[:, 1])
    assert torch.equal(seq(images, 1.0), frames[:, 4])
    assert torch.allclose(seq(images, 0.375), (frames[:, 1] + frames[:, 2]) / 2)
    assert seq.num_steps == 5


def test_load_sequences_formats(tmp_path):
    frames = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    np.savez(tmp_path / "seq.npz", frames=frames.numpy(), x=np.array([0.0, 0.25, 1.0]))
    torch.save({"frames": frames.float() / 255}, tmp_path / "seq.pt")
    for i in range(2):
        for k in range(3):
            (tmp_path / "frames" / f"img{i}").mkdir(parents=True, exist_ok=True)
            write_png(frames[i, k], str(tmp_path / "frames" / f"img{i}" / f"{k:03d}.png"))
    expected = frames.float() / 255
    npz = load_sequences(tmp_path / "seq.npz")
    assert torch.equal(npz.frames, expected) and torch.equal(npz.x, torch.tensor([0.0, 0.25, 1.0]))
    assert torch.equal(load_sequences(tmp_path / "seq.pt").frames, expected)
    assert torch.equal(load_sequences(tmp_path / "frames").frames, expected)
    assert torch.equal(npz(torch.zeros(2, 3, 4, 4), 0.25), expected[:, 1])


def test_image_properties_act_on_the_whole_image_or_only_the_region():
    from interventions.properties import get_property

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=g)
    region = torch.zeros(2, 1, 16, 16)
    region[:, :, :8] = 1
    for name in ("brightness", "contrast", "saturation", "hue", "blur", "noise"):
        whole = get_property(name)({"image": images}, None)
        assert torch.allclose(whole(images, 0.0), images, atol=1e-5), name  # x = 0 leaves the image as is
        assert not torch.allclose(whole(images, 1.0), images, atol=1e-3), name
        inside = get_property(name)({"image": images, "region": region}, None)(images, 1.0)
        assert torch.equal(inside[:, :, 8:], images[:, :, 8:]), name  # nothing changes outside the region
    assert torch.allclose(get_property("brightness")({"image": images}, None)(images, 1.0), torch.zeros_like(images))
    grey = get_property("saturation")({"image": images}, None)(images, 1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    half = get_property("contrast")({"image": images}, None)(images, 0.5)
    assert torch.allclose(half, 0.5 * images + 0.5 * images.mean((2, 3), keepdim=True), atol=1e-6)


def test_frames_property_and_its_clear_errors(tmp_path):
    from interventions.properties import get_property

    frames = torch.rand(2, 4, 3, 8, 8)
    np.savez(tmp_path / "seq.npz", frames=frames.numpy(), x=np.array([0.0, 0.2, 0.7, 1.0]))
    edit = get_property(f"frames:{tmp_path / 'seq.npz'}")({"image": torch.rand(2, 3, 8, 8)}, None)
    assert edit.num_steps == 4 and torch.allclose(edit(torch.rand(2, 3, 8, 8), 0.7), frames[:, 2])
    with pytest.raises(ValueError, match="sequences .* are 2 x 4 frames of 8x8 px, but the batch is 3 images"):
        get_property(f"frames:{tmp_path / 'seq.npz'}")({"image": torch.rand(3, 3, 8, 8)}, None)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "x.txt").write_text("0\n0.5\n")
    with pytest.raises(ValueError, match="2 x values for 3 frames per image"):
        get_property(f"frames:{folder}")
