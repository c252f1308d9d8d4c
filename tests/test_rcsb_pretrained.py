"""guided-diffusion's pretrained 256x256 ADM as the bridge's starting point (rcsb.checkpoints, rcsb.stage): the key
mapping on a fake file in OpenAI's layout, and a missing file or no network failing at once with the ways out."""
import time

import pytest
import torch

import models.weights as weights
from rcsb import ADM256_UNCOND_URL, ADMWeightsUnavailable, BridgeModule, adm256, load_openai_adm, openai_adm_state_dict
from rcsb import resolve_adm_checkpoint
from rcsb.checkpoints import adm_cache_path

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = 32  # a reduced-width ADM-256: model_channels 32 instead of 256, everything else as released


def openai_layout(mc: int = WIDTH, mult=(1, 1, 2, 2, 4, 4), blocks: int = 2, attention=(8, 16, 32),
                  learn_sigma: bool = True) -> dict[str, tuple[int, ...]]:
    """Key names and shapes, in order, of guided-diffusion's UNetModel with the released 256x256 unconditional
    model's flags (scale-shift norm, resblock up/down, learned sigma: 6 output channels), written out from its
    constructor (guided_diffusion/unet.py) for width ``mc``."""
    emb = 4 * mc
    keys: dict[str, tuple[int, ...]] = {}

    def add(prefix, **shapes):
        for name, shape in shapes.items():
            keys[f"{prefix}.{name.replace('__', '.')}"] = shape

    def res(prefix, ch, out):
        add(prefix, in_layers__0__weight=(ch,), in_layers__0__bias=(ch,), in_layers__2__weight=(out, ch, 3, 3),
            in_layers__2__bias=(out,), emb_layers__1__weight=(2 * out, emb), emb_layers__1__bias=(2 * out,),
            out_layers__0__weight=(out,), out_layers__0__bias=(out,), out_layers__3__weight=(out, out, 3, 3),
            out_layers__3__bias=(out,))
        if out != ch:
            add(prefix, skip_connection__weight=(out, ch, 1, 1), skip_connection__bias=(out,))

    def attn(prefix, ch):
        add(prefix, norm__weight=(ch,), norm__bias=(ch,), qkv__weight=(3 * ch, ch, 1), qkv__bias=(3 * ch,),
            proj_out__weight=(ch, ch, 1), proj_out__bias=(ch,))

    add("time_embed", **{"0__weight": (emb, mc), "0__bias": (emb,), "2__weight": (emb, emb), "2__bias": (emb,)})
    ch = mult[0] * mc
    add("input_blocks.0.0", weight=(ch, 3, 3, 3), bias=(ch,))
    skips, ds, i = [ch], 1, 1
    for level, m in enumerate(mult):
        for _ in range(blocks):
            res(f"input_blocks.{i}.0", ch, m * mc)
            ch = m * mc
            if ds in attention:
                attn(f"input_blocks.{i}.1", ch)
            skips.append(ch)
            i += 1
        if level != len(mult) - 1:
            res(f"input_blocks.{i}.0", ch, ch)
            skips.append(ch)
            ds, i = ds * 2, i + 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    i = 0
    for level, m in reversed(list(enumerate(mult))):
        for j in range(blocks + 1):
            res(f"output_blocks.{i}.0", ch + skips.pop(), m * mc)
            ch, k = m * mc, 1
            if ds in attention:
                attn(f"output_blocks.{i}.1", ch)
                k = 2
            if level and j == blocks:
                res(f"output_blocks.{i}.{k}", ch, ch)
                ds //= 2
            i += 1
    out = 6 if learn_sigma else 3
    add("out", **{"0__weight": (ch,), "0__bias": (ch,), "2__weight": (out, mult[0] * mc, 3, 3), "2__bias": (out,)})
    return keys


@pytest.fixture(scope="module")
def openai_file(tmp_path_factory):
    """A fake 256x256_diffusion_uncond.pt of the reduced width: OpenAI's names and shapes, random values."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in openai_layout().items()}
    path = tmp_path_factory.mktemp("adm") / "256x256_diffusion_uncond.pt"
    torch.save(state, path)
    return path, state


def _small_adm():
    return adm256(model_channels=WIDTH, image_size=64)


def test_the_layout_has_adm256_s_566_keys_in_order():
    layout = openai_layout(mc=256, learn_sigma=False)
    with torch.device("meta"):
        own = adm256().state_dict()
    assert len(layout) == 566 and list(layout) == list(own)
    assert all(tuple(own[k].shape) == shape for k, shape in layout.items())
    assert sum(torch.Size(s).numel() for s in layout.values()) == 552_807_171


def test_the_openai_file_loads_into_adm256_with_the_eps_half_of_the_output(openai_file):
    path, state = openai_file
    loaded = torch.load(path, weights_only=True)
    assert loaded["out.2.weight"].shape == (6, WIDTH, 3, 3)
    net = load_openai_adm(path, _small_adm())
    own = net.state_dict()
    assert list(own) == list(state)  # the same names in the same order: the mapping keeps every name
    for key, value in own.items():
        expected = state[key][:3] if key.startswith("out.2.") else state[key]  # learned sigma's half dropped
        assert torch.equal(value, expected), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(net(x, torch.tensor([500.0]))).all()


def test_the_mapping_keeps_net_s_init_for_extra_input_channels_and_casts(openai_file):
    _, state = openai_file
    net = adm256(model_channels=WIDTH, image_size=64, in_channels=6)  # I2SB's --cond-x1 network: [x_t, x1]
    before = net.input_blocks[0][0].weight.detach().clone()
    mapped = openai_adm_state_dict({k: v.half() for k, v in state.items()}, net)
    assert mapped["input_blocks.0.0.weight"].shape == (WIDTH, 6, 3, 3)
    assert torch.equal(mapped["input_blocks.0.0.weight"][:, :3], state["input_blocks.0.0.weight"].half().float())
    assert torch.equal(mapped["input_blocks.0.0.weight"][:, 3:], before[:, 3:])
    assert all(v.dtype == torch.float32 for v in mapped.values())


def test_the_bridge_stage_starts_from_the_file_in_both_networks_and_not_when_rebuilt(openai_file, monkeypatch):
    path, state = openai_file
    module = BridgeModule(network={"preset": "adm256", "model_channels": WIDTH}, image_size=64, pretrained=str(path))
    for net in (module.net, module.ema):
        assert torch.equal(net.middle_block[1].qkv.weight, state["middle_block.1.qkv.weight"])
        assert torch.equal(net.out[2].bias, state["out.2.bias"][:3])
    assert BridgeModule.load_overrides["pretrained"] is None  # a checkpoint carries the weights: no file needed


def test_a_file_of_another_width_is_refused_with_the_fix(openai_file):
    path, _ = openai_file
    with pytest.raises(ValueError, match="wrong shapes.*Fix"):
        load_openai_adm(path, adm256(model_channels=64, image_size=64))


def test_a_missing_file_names_the_ways_out(tmp_path):
    with pytest.raises(ADMWeightsUnavailable) as info:
        BridgeModule(network="tiny", image_size=32, pretrained=str(tmp_path / "adm.pt"))
    message = str(info.value)
    for way in (ADM256_UNCOND_URL, adm_cache_path(), "--model.init_args.pretrained PATH",
                "model.init_args.pretrained", "--model.init_args.pretrained null", "no such file"):
        assert way in message


def test_offline_without_a_cached_copy_fails_in_seconds_with_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_unreachable", lambda url, timeout=3.0: "no network: cannot reach the host")
    start = time.perf_counter()
    with pytest.raises(ADMWeightsUnavailable, match="no network") as info:
        resolve_adm_checkpoint("openai")
    assert time.perf_counter() - start < 5
    cached = tmp_path / "hub" / "checkpoints" / "256x256_diffusion_uncond.pt"
    assert ADM256_UNCOND_URL in str(info.value) and str(cached) in str(info.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ADMWeightsUnavailable, match="HF_HUB_OFFLINE"):
        BridgeModule(network="tiny", image_size=32, pretrained="openai")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_adm_checkpoint("openai") == str(cached)  # a cached copy is used without any network
