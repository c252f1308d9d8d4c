"""RCSB against references computed here from the equations, not from the package's own helpers.

* A 3-step guided trajectory on a tiny network: every intermediate of ``rcsb_sample`` (the start state, Tweedie's
  x0_hat, the classifier gradient through x0_hat, the ADAM update, the normalisation by the first update's norm, the
  I2SB posterior, the known-pixel reset outside the region) against I2SB's and RCSB's equations written out below.
* guided-diffusion's ADM blocks (ResBlock with and without scale/shift norm, up/down sampling; AttentionBlock with the
  legacy head split) and a whole U-Net forward pass against a hand-written transcription of their equations.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rcsb import BridgeSchedule, adm_tiny, rcsb_sample
from rcsb.network import AttentionBlock, Downsample, ResBlock, Upsample

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- the sampler's equations


def i2sb_tables(interval: int = 1000, beta_max: float = 1.0) -> dict[str, torch.Tensor]:
    """I2SB eq. 11 in float64: the mirrored schedule, the forward/backward variances and the bridge coefficients."""
    betas = torch.linspace(1e-4**0.5, (beta_max / interval) ** 0.5, interval, dtype=torch.float64) ** 2
    betas = torch.cat([betas[: interval // 2], betas[: interval // 2].flip(0)])
    var_fwd = betas.cumsum(0)
    var_bwd = betas.flip(0).cumsum(0).flip(0)
    return {
        "var_fwd": var_fwd,
        "mu_x0": var_bwd / (var_fwd + var_bwd),
        "mu_x1": var_fwd / (var_fwd + var_bwd),
        "time": torch.linspace(1e-4, 1.0, interval, dtype=torch.float32) * interval,
    }


class TinyEps(nn.Module):
    """A tiny time-dependent network (x_t, t) -> eps: a 3x3 conv, tanh, scaled by the time input."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(3, generator=g) * 0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * (0.5 + t.view(-1, 1, 1, 1) / 1000)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.Softplus(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 3)).eval()


def reference_trajectory(net, clf, images, region, target, start, nfe, scale, noise, clf_input="affine"):
    """RCSB with I2SB's OT-ODE, written out: returns the per-step (step, prev, x_t, x0_hat, grad, update) and the
    counterfactual in [0, 1]."""
    tab = i2sb_tables()
    stride = (start - 1) / nfe  # I2SB util.space_indices(start, nfe + 1)
    steps = [round(i * stride) for i in range(nfe + 1)]
    b = images.shape[0]
    rows = torch.arange(b)
    keep = region.expand_as(images)
    x0 = images * 2 - 1
    x1 = torch.where(keep, noise, x0)  # I2SB inpainting prior: noise in the hole, the image elsewhere
    n0 = start - 1  # the authors' q_sample(start_step - 1, x0, x1): the bridge marginal, no noise (OT-ODE)
    x = float(tab["mu_x0"][n0]) * x0 + float(tab["mu_x1"][n0]) * x1
    x = torch.where(keep, x, x0)
    m = v = first_norm = None
    records = []
    for k, (n, p) in enumerate(zip(reversed(steps[1:]), reversed(steps[:-1])), start=1):
        x_t = x.detach().requires_grad_(True)
        std_n = float(tab["var_fwd"][n]) ** 0.5
        x0_hat = x_t - std_n * net(x_t, tab["time"][n].expand(b))  # Tweedie's estimate (I2SB eq. 12 inverted)
        if clf_input == "affine":
            seen = (x0_hat + 1) / 2
        else:
            low = x0_hat.flatten(1).min(1).values.view(-1, 1, 1, 1)
            high = x0_hat.flatten(1).max(1).values.view(-1, 1, 1, 1)
            seen = (x0_hat - low) / (high - low)
        log_p = torch.log_softmax(clf(seen), dim=1)[rows, target]
        (grad,) = torch.autograd.grad(log_p.sum(), x_t)
        m = 0.1 * grad if m is None else 0.9 * m + 0.1 * grad  # ADAM (0.9, 0.999, 1e-8), bias-corrected
        v = 0.001 * grad**2 if v is None else 0.999 * v + 0.001 * grad**2
        update = (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + 1e-8)
        if first_norm is None:  # adaptive normalisation: the FIRST update's per-image norm, kept for the run
            first_norm = update.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        update = update / first_norm
        x_t, x0_hat = x_t.detach(), x0_hat.detach()
        records.append((n, p, x_t, x0_hat, grad, update))
        guided = x_t + scale * update  # the guidance moves x_t before the posterior step
        var_n, var_p = float(tab["var_fwd"][n]), float(tab["var_fwd"][p])
        x_prev = (var_n - var_p) / var_n * x0_hat + var_p / var_n * guided  # I2SB eq. 4, OT-ODE (no noise)
        x = torch.where(keep, x_prev, x0)  # the known pixels reset to the image
    out = torch.where(keep, ((x + 1) / 2).clamp(0, 1), images)
    return records, out


@pytest.fixture(scope="module")
def scene():
    g = torch.Generator().manual_seed(11)
    images = torch.rand(2, 3, 8, 8, generator=g)
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[0, :, 1:5, 2:7] = True
    region[1, :, 4:8, 0:3] = True
    return images, region, torch.tensor([2, 0])


@pytest.mark.parametrize("clf_input", ["affine", "minmax"])
def test_a_three_step_trajectory_equals_the_equations_at_every_step(scene, clf_input):
    images, region, target = scene
    net, clf = TinyEps().eval(), tiny_classifier()
    start, nfe, scale, seed = 301, 3, 1.5, 7
    seen = []
    out = rcsb_sample(net, BridgeSchedule.i2sb(), clf, images, region, target, nfe=nfe, start=start, scale=scale,
                      clf_input=clf_input, generator=torch.Generator().manual_seed(seed),
                      on_step=lambda *a: seen.append(tuple(t.detach().clone() if torch.is_tensor(t) else t for t in a)))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))  # the sampler's one draw
    records, expected = reference_trajectory(net, clf, images, region, target, start, nfe, scale, noise, clf_input)
    assert [(s[0], s[1]) for s in seen] == [(300, 200), (200, 100), (100, 0)]
    assert [(r[0], r[1]) for r in records] == [(300, 200), (200, 100), (100, 0)]
    names = ("x_t", "x0_hat", "grad", "update")
    for got, ref in zip(seen, records):
        for name, a, b in zip(names, got[2:], ref[2:]):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"step {got[0]}, {name}: {m}")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    assert (out - images).abs().amax() > 1e-2  # the trajectory moved inside the region
    outside = ~region.expand_as(images)
    assert torch.equal(out[outside], images[outside])


# --------------------------------------------------------------------------- guided-diffusion's ADM equations


def group_norm(x, norm):
    """GroupNorm32: 32 groups, statistics in float32, eps 1e-5, per-channel affine."""
    b, c = x.shape[:2]
    g = x.float().reshape(b, 32, -1)
    g = (g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    shape = (1, c) + (1,) * (x.ndim - 2)
    return (g.reshape(x.shape) * norm.weight.view(shape) + norm.bias.view(shape)).to(x.dtype)


def silu(x):
    return x * torch.sigmoid(x)


def conv(x, layer, padding=None):
    pad = layer.padding[0] if padding is None else padding
    if x.ndim == 3:
        return torch.einsum("oc,bct->bot", layer.weight[..., 0], x) + layer.bias.view(1, -1, 1)
    return F.conv2d(x, layer.weight, layer.bias, stride=layer.stride, padding=pad)


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def resample(x, up):
    """Nearest-neighbour doubling or 2x2 average pooling (the parameter-free resamplers of up/down ResBlocks)."""
    if up:
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean((3, 5))


def ref_resblock(block, x, emb, updown=None):
    """guided-diffusion ResBlock._forward: in_layers (norm, SiLU, [resample], conv) on h and the same resample on x;
    time embedding as FiLM on the second norm (scale first, then shift) or added before it; skip + h."""
    h = silu(group_norm(x, block.in_layers[0]))
    if updown is not None:
        h, x = resample(h, updown), resample(x, updown)
    h = conv(h, block.in_layers[2])
    e = linear(silu(emb), block.emb_layers[1])[..., None, None]
    if block.use_scale_shift_norm:
        c = h.shape[1]
        scale, shift = e[:, :c], e[:, c:]
        h = group_norm(h, block.out_layers[0]) * (1 + scale) + shift
    else:
        h = group_norm(h + e, block.out_layers[0])
    h = conv(silu(h), block.out_layers[3])
    skip = x if isinstance(block.skip_connection, nn.Identity) else conv(x, block.skip_connection)
    return skip + h


def ref_attention(block, x):
    """guided-diffusion AttentionBlock with QKVAttentionLegacy: heads split before q/k/v, q and k each scaled by
    ch^(-1/4), softmax over the keys, proj_out, residual."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    qkv = conv(group_norm(flat, block.norm), block.qkv)
    heads = block.num_heads
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    s = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (flat + conv(a, block.proj_out)).reshape(b, c, *spatial)


def ref_layer(layer, h, emb):
    if isinstance(layer, ResBlock):
        up = isinstance(layer.h_upd, Upsample)
        return ref_resblock(layer, h, emb, updown=up if isinstance(layer.h_upd, (Upsample, Downsample)) else None)
    if isinstance(layer, AttentionBlock):
        return ref_attention(layer, h)
    if isinstance(layer, Downsample):
        return conv(h, layer.op, padding=1) if isinstance(layer.op, nn.Conv2d) else resample(h, False)
    if isinstance(layer, Upsample):
        h = resample(h, True)
        return conv(h, layer.conv) if layer.use_conv else h
    return conv(h, layer)


def ref_unet(net, x, t):
    """guided-diffusion UNetModel.forward: sinusoidal embedding (cos, then sin) -> time MLP; input blocks, each output
    kept; middle block; output blocks on cat([h, skip], channels) with the skips taken last-in first-out; out."""
    half = net.model_channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    emb = linear(silu(linear(emb, net.time_embed[0])), net.time_embed[2])
    h, skips = x, []
    for block in net.input_blocks:
        for layer in block:
            h = ref_layer(layer, h, emb)
        skips.append(h)
    for layer in net.middle_block:
        h = ref_layer(layer, h, emb)
    for block in net.output_blocks:
        h = torch.cat([h, skips.pop()], dim=1)
        for layer in block:
            h = ref_layer(layer, h, emb)
    return conv(silu(group_norm(h, net.out[0])), net.out[2])


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] % 32 == 0 else 0.0))
    return module.eval()


@pytest.mark.parametrize("kind", ["same", "wider", "down", "up", "additive"])
def test_a_resblock_equals_guided_diffusion_s_equations(kind):
    channels, out = (64, 96) if kind == "wider" else (64, 64)
    block = ResBlock(channels, 48, 0.0, out, use_scale_shift_norm=kind != "additive", up=kind == "up",
                     down=kind == "down")
    _randomise(block, seed=len(kind))
    x = torch.randn(2, channels, 8, 6, generator=torch.Generator().manual_seed(1))
    emb = torch.randn(2, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = block(x, emb)
        expected = ref_resblock(block, x, emb, updown={"up": True, "down": False}.get(kind))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_an_attention_block_equals_guided_diffusion_s_equations(heads):
    block = _randomise(AttentionBlock(64, num_heads=heads), seed=heads)
    x = torch.randn(2, 64, 3, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref_attention(block, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("updown", [True, False])
def test_a_whole_unet_forward_equals_guided_diffusion_s_equations(updown):
    net = _randomise(adm_tiny(resblock_updown=updown), seed=9)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([3.0, 640.0])
    with torch.no_grad():
        got, expected = net(x, t), ref_unet(net, x, t)
    assert expected.abs().amax() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
