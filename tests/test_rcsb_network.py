"""RCSB network (rcsb.network) and I2SB checkpoint loading (rcsb.checkpoints), all on CPU or the meta device."""
import math

import pytest
import torch

from rcsb import ADM256_CONFIG, ADMUNet, adm256, adm_tiny, extract_i2sb_state_dict, load_i2sb_weights, timestep_embedding
from rcsb.network import AttentionBlock


pytestmark = pytest.mark.usefixtures("one_thread")

# Key names and shapes of guided-diffusion's UNetModel (openai/guided-diffusion guided_diffusion/unet.py,
# commit 18ff408) for the tiny config: widths 32/64/64, one res block, attention at downsample factor 4,
# scale-shift norm, resblock up/down. Checked against UNetModel built with the same arguments.
TINY_KEYS = {
    "time_embed.0.weight": (128, 32),
    "time_embed.2.weight": (128, 128),
    "input_blocks.0.0.weight": (32, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (32,),
    "input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (64, 128),  # 2 * out channels: scale and shift
    "input_blocks.1.0.out_layers.0.weight": (32,),
    "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3),
    "input_blocks.2.0.in_layers.2.weight": (32, 32, 3, 3),  # downsampling ResBlock
    "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
    "input_blocks.5.1.norm.weight": (64,),
    "input_blocks.5.1.qkv.weight": (192, 64, 1),
    "input_blocks.5.1.proj_out.weight": (64, 64, 1),
    "middle_block.0.emb_layers.1.weight": (128, 128),
    "middle_block.1.qkv.weight": (192, 64, 1),
    "middle_block.1.proj_out.weight": (64, 64, 1),
    "middle_block.2.out_layers.3.weight": (64, 64, 3, 3),
    "output_blocks.0.0.skip_connection.weight": (64, 128, 1, 1),
    "output_blocks.0.1.qkv.weight": (192, 64, 1),
    "output_blocks.1.2.in_layers.2.weight": (64, 64, 3, 3),  # upsampling ResBlock
    "output_blocks.3.0.skip_connection.weight": (64, 96, 1, 1),
    "output_blocks.3.1.emb_layers.1.weight": (128, 128),
    "output_blocks.5.0.skip_connection.weight": (32, 64, 1, 1),
    "out.0.weight": (32,),
    "out.2.weight": (3, 32, 3, 3),
}
TINY_NUM_KEYS = 198
# with resblock_updown=False the resamplers are Downsample.op / Upsample.conv convolutions
TINY_CONV_RESAMPLE_KEYS = {
    "input_blocks.2.0.op.weight": (32, 32, 3, 3),
    "input_blocks.4.0.op.weight": (64, 64, 3, 3),
    "output_blocks.1.2.conv.weight": (64, 64, 3, 3),
    "output_blocks.3.1.conv.weight": (64, 64, 3, 3),
}


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero-initialised output convs etc. with small random weights so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def test_adm256_parameter_count_on_meta_device():
    with torch.device("meta"):
        net = adm256()
    assert all(p.is_meta for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 552_807_171
    sd = net.state_dict()
    assert len(sd) == 566
    assert sd["input_blocks.0.0.weight"].shape == (256, 3, 3, 3)
    assert sd["middle_block.1.qkv.weight"].shape == (3072, 1024, 1)
    assert sd["output_blocks.17.0.skip_connection.weight"].shape == (256, 512, 1, 1)
    assert sd["out.2.weight"].shape == (3, 256, 3, 3)
    assert net.attention_resolutions == (8, 16, 32) and ADM256_CONFIG["num_head_channels"] == 64


def test_tiny_state_dict_names_match_guided_diffusion():
    sd = adm_tiny().state_dict()
    assert len(sd) == TINY_NUM_KEYS
    for key, shape in TINY_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not [k for k in sd if "attention" in k or "upd" in k]  # parameter-free submodules hold no state
    conv = adm_tiny(resblock_updown=False).state_dict()
    for key, shape in TINY_CONV_RESAMPLE_KEYS.items():
        assert tuple(conv[key].shape) == shape, key
    # parameter order equals state-dict order (no buffers), which the EMA shadow list relies on
    net = adm_tiny()
    assert [n for n, _ in net.named_parameters()] == list(net.state_dict())


def test_tiny_forward_shape_and_time_dependence():
    torch.manual_seed(0)
    net = _randomize(adm_tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x, torch.tensor([10.0, 10.0]))
        assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
        other = net(x, torch.tensor([10.0, 900.0]))
        torch.testing.assert_close(other[0], out[0])
        assert (other[1] - out[1]).abs().max() > 1e-3  # the output depends on t
        torch.testing.assert_close(net(x, torch.tensor(10.0)), out)  # scalar t broadcasts
        assert net(torch.randn(1, 3, 64, 48), torch.tensor([3.0])).shape == (1, 3, 64, 48)  # any size divisible by 4
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 3, 30, 32), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="channels|shape"):
        net(torch.randn(2, 4, 32, 32), torch.tensor([1.0, 2.0]))


def test_fresh_network_outputs_zero_like_guided_diffusion():
    # guided-diffusion zero-initialises out.2, so an untrained net predicts 0 everywhere
    with torch.no_grad():
        assert torch.equal(adm_tiny()(torch.randn(1, 3, 32, 32), torch.tensor([5.0])), torch.zeros(1, 3, 32, 32))


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)  # odd dims pad a zero


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_head_split_matches_guided_diffusion(new_order):
    """QKVAttentionLegacy splits heads before q/k/v; QKVAttention splits q/k/v first (reference written out here)."""
    torch.manual_seed(1)
    block = _randomize(AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order), seed=2)
    x = torch.randn(2, 64, 4, 4)
    b, c, heads, d = 2, 64, 4, 16
    flat = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(flat))
    if new_order:
        q, k, v = (t.reshape(b * heads, d, -1) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
    ref = flat + block.proj_out(torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1))
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref.reshape_as(x).detach(), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    grads = []
    for flag in (False, True):
        net = _randomize(adm_tiny(use_checkpoint=flag), seed=3)
        x.grad = None
        net(x, torch.tensor([400.0])).square().sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------- I2SB checkpoint loading


class _NotWeights:
    """A pickled Python object: torch.load(weights_only=True) refuses it."""


def _fake_i2sb_checkpoint(net: ADMUNet) -> dict:
    """The layout NVlabs' Runner.train saves: wrapper state dict, torch_ema state, optimizer, scheduler."""
    return {
        "net": {f"diffusion_model.{k}": v.clone() for k, v in net.state_dict().items()},
        "ema": {
            "decay": 0.99,
            "num_updates": 7,
            "shadow_params": [p.detach().clone() + 1.0 for p in net.parameters()],
            "collected_params": None,
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": list(range(len(list(net.parameters()))))}]},
        "sched": {"step_size": 1000, "gamma": 0.99, "last_epoch": 7},
    }


@pytest.fixture(scope="module")
def source_net():
    return _randomize(adm_tiny(), seed=4)


def test_loader_reads_ema_and_raw_weights(tmp_path, source_net):
    path = tmp_path / "latest.pt"
    torch.save(_fake_i2sb_checkpoint(source_net), path)
    ema_net = load_i2sb_weights(path, adm_tiny())
    for (name, p), src in zip(ema_net.named_parameters(), source_net.parameters()):
        assert torch.equal(p, src + 1.0), name
    raw_net = load_i2sb_weights(path, adm_tiny(), use_ema=False)
    for (name, p), src in zip(raw_net.named_parameters(), source_net.parameters()):
        assert torch.equal(p, src), name
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([250.0])
    with torch.no_grad():
        torch.testing.assert_close(raw_net(x, t), source_net(x, t))


def test_loader_accepts_ema_only_and_bare_state_dicts(tmp_path, source_net):
    ckpt = _fake_i2sb_checkpoint(source_net)
    del ckpt["net"]  # names then come from the network's own parameter order
    state = extract_i2sb_state_dict(ckpt, adm_tiny())
    assert torch.equal(state["out.2.weight"], source_net.out[2].weight + 1.0)
    path = tmp_path / "adm.pt"
    torch.save(source_net.state_dict(), path)  # e.g. I2SB's 256x256_diffusion_uncond_fixedsigma.pt
    net = load_i2sb_weights(path, adm_tiny())
    assert torch.equal(net.input_blocks[0][0].weight, source_net.input_blocks[0][0].weight)
    legacy = tmp_path / "legacy.pt"  # pre-zip torch.save format: read without memory mapping
    torch.save(_fake_i2sb_checkpoint(source_net), legacy, _use_new_zipfile_serialization=False)
    net = load_i2sb_weights(legacy, adm_tiny())
    assert torch.equal(net.out[2].weight, source_net.out[2].weight + 1.0)


def test_loader_errors_are_clear(tmp_path, source_net):
    with pytest.raises(FileNotFoundError):
        load_i2sb_weights(tmp_path / "missing.pt", adm_tiny())

    code = tmp_path / "code.pt"
    torch.save({"net": _NotWeights()}, code)
    with pytest.raises(ValueError, match=r"refused by torch.load\(weights_only=True\): it pickles .*_NotWeights"):
        load_i2sb_weights(code, adm_tiny())

    for i, junk in enumerate((b"this is not a checkpoint at all", b"garbage!!", b"")):
        garbage = tmp_path / f"garbage{i}.pt"
        garbage.write_bytes(junk)
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint.*expected an NVlabs I2SB checkpoint"):
            load_i2sb_weights(garbage, adm_tiny())

    other = tmp_path / "other.pt"
    torch.save({"model": [1, 2, 3], "epoch": 3}, other)
    with pytest.raises(ValueError, match="'net' and 'ema'"):
        load_i2sb_weights(other, adm_tiny())

    ckpt = _fake_i2sb_checkpoint(source_net)
    wrong = tmp_path / "wrong_size.pt"
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match="wrong shapes.*Fix: build the network"):
        load_i2sb_weights(wrong, adm_tiny(model_channels=64), use_ema=False)
    with pytest.raises(ValueError, match="in_channels=3"):
        load_i2sb_weights(wrong, adm_tiny(in_channels=6), use_ema=False)
    with pytest.raises(ValueError, match="missing keys"):
        load_i2sb_weights(wrong, adm_tiny(channel_mult=(1, 2, 2, 2)), use_ema=False)

    short = dict(ckpt, ema=dict(ckpt["ema"], shadow_params=ckpt["ema"]["shadow_params"][:-1]))
    with pytest.raises(ValueError, match="EMA holds"):
        extract_i2sb_state_dict(short, adm_tiny())
    with pytest.raises(ValueError, match="use_ema=False"):
        extract_i2sb_state_dict({k: v for k, v in ckpt.items() if k != "ema"}, adm_tiny())
    renamed = dict(ckpt, net={k.replace("diffusion_model.", "backbone."): v for k, v in ckpt["net"].items()})
    with pytest.raises(ValueError, match="diffusion_model"):
        extract_i2sb_state_dict(renamed, adm_tiny())


def test_from_i2sb_keeps_the_raw_weights_in_net_and_the_ema_in_ema(tmp_path, source_net):
    from rcsb import BridgeModule

    path = tmp_path / "latest.pt"
    ckpt = _fake_i2sb_checkpoint(source_net)
    torch.save(ckpt, path)
    module = BridgeModule.from_i2sb(path, network="tiny", image_size=32)
    for (name, raw), (_, ema), src in zip(module.net.named_parameters(), module.ema.named_parameters(),
                                          source_net.parameters()):
        assert torch.equal(raw, src) and torch.equal(ema, src + 1.0), name
    assert module.denoiser() is module.ema and module.denoiser(ema=False) is module.net
    torch.save({"net": ckpt["net"]}, path)  # one of the two: it fills both networks
    module = BridgeModule.from_i2sb(path, network="tiny", image_size=32)
    assert all(torch.equal(a, b) for a, b in zip(module.net.parameters(), module.ema.parameters()))
    assert torch.equal(module.ema.out[2].weight, source_net.out[2].weight)
