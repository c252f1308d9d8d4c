"""ADM U-Net (Dhariwal & Nichol 2021) as used by I2SB, written for current PyTorch.

The module tree mirrors guided-diffusion's ``UNetModel`` so that ``state_dict()`` keys, tensor
shapes and parameter order are the same (``time_embed.0``, ``input_blocks.N.M.in_layers.2``,
``middle_block.1.qkv``, ``output_blocks.N.M.emb_layers.1``, ``out.2``, ...), which is what lets
NVlabs' released I2SB checkpoints load directly (see :mod:`rcsb.checkpoints`).

Differences from the original that do not touch the weights: attention runs through
``F.scaled_dot_product_attention`` (same maths, same head split), gradient checkpointing uses
``torch.utils.checkpoint`` and is off by default, there is no class conditioning and no fp16
conversion (use autocast). Only 2-D images.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ADM256_CONFIG", "ADMUNet", "TINY_CONFIG", "adm256", "adm_tiny", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """guided-diffusion nn.timestep_embedding: sinusoidal features [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over 32 groups computed in float32 (guided-diffusion's GroupNorm32)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve the resolution: strided 3x3 conv (``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), optionally followed by a 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block with time-embedding conditioning (scale/shift FiLM or additive), optional up/down sampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.updown = up or down
        # registration order = guided-diffusion's, so parameters() order matches theirs
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:  # resample between the activation and the conv, on both branches
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions (1x1 Conv1d ``qkv`` and ``proj_out``, residual)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"{channels} channels are not divisible into {self.num_heads} heads")
        self.use_new_attention_order = use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        # legacy order splits heads first, then q/k/v inside each head; the new order the reverse
        pattern = "b (three h d) t -> three b h t d" if self.use_new_attention_order else "b (h three d) t -> three b h t d"
        q, k, v = rearrange(qkv, pattern, three=3, h=self.num_heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, as in QKVAttention(Legacy)
        h = self.proj_out(rearrange(h, "b h t d -> b (h d) t"))
        return (x + h).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """Sequential container that passes the time embedding to the residual blocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """ADM U-Net with guided-diffusion ``UNetModel`` state-dict names; ``forward(x, t)`` returns the I2SB eps-like output.

    Args:
        image_size: nominal input size (kept for reference; any size divisible by
            ``2 ** (len(channel_mult) - 1)`` runs).
        in_channels, out_channels: image channels in and out (3 and 3 for I2SB inpainting).
        model_channels: base width; the time embedding has ``4 * model_channels`` features.
        num_res_blocks: residual blocks per resolution level.
        attention_resolutions: downsample factors (not pixel sizes) at which attention is used,
            as in ``UNetModel``: ADM-256's "32,16,8" pixels is ``(8, 16, 32)``.
        channel_mult: width multiplier per level; the number of levels sets the depth.
        num_heads, num_head_channels, num_heads_upsample: attention heads; a fixed
            ``num_head_channels`` (ADM: 64) overrides ``num_heads``.
        use_scale_shift_norm: FiLM-style conditioning of the second norm in each ResBlock.
        resblock_updown: resample with ResBlocks (else strided conv / nearest + conv).
        dropout: dropout inside the ResBlocks.
        conv_resample: learned conv when not ``resblock_updown``.
        use_new_attention_order: guided-diffusion's QKVAttention split order instead of the legacy one.
        use_checkpoint: gradient checkpointing in every ResBlock and attention block (saves memory
            when back-propagating through the network, e.g. for classifier guidance).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        dropout: float = 0.0,
        conv_resample: bool = True,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = {int(a) for a in attention_resolutions}
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.channel_mult = tuple(channel_mult)
        self.attention_resolutions = tuple(sorted(attention_resolutions))
        emb_dim = model_channels * 4

        def res(ch: int, out: Optional[int] = None, **kw: Any) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out, use_scale_shift_norm, use_checkpoint=use_checkpoint, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order, use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = input_ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(self.channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict the network output for images ``x`` (B, C, H, W) at time inputs ``t`` (B,) or scalar.

        ``t`` is the already-scaled time input (I2SB: ``BridgeSchedule.time_input(step)``, in [0, T]).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"image height and width must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb_in = timestep_embedding(t, self.model_channels)
        emb = self.time_embed(emb_in.to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


ADM256_CONFIG: dict[str, Any] = dict(
    image_size=256,
    in_channels=3,
    model_channels=256,
    out_channels=3,  # learn_sigma=False: I2SB keeps only the first 3 of ADM's 6 output channels
    num_res_blocks=2,
    attention_resolutions=tuple(256 // r for r in (32, 16, 8)),  # pixel sizes 32, 16, 8 -> factors 8, 16, 32
    channel_mult=(1, 1, 2, 2, 4, 4),
    num_heads=4,  # overridden by num_head_channels
    num_head_channels=64,
    use_scale_shift_norm=True,
    resblock_updown=True,
    dropout=0.0,
)
"""The 256x256 unconditional ADM that NVlabs' I2SB ImageNet checkpoints use (552,807,171 parameters)."""

TINY_CONFIG: dict[str, Any] = dict(
    image_size=32,
    in_channels=3,
    model_channels=32,
    out_channels=3,
    num_res_blocks=1,
    attention_resolutions=(4,),  # attention at 8x8 (and always in the middle block)
    channel_mult=(1, 2, 2),
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=True,
    dropout=0.0,
)
"""A 1.4M-parameter ADM with the same structure, for CPU tests on 32x32 images."""


def adm256(**overrides: Any) -> ADMUNet:
    """The I2SB ADM-256 network (guided-diffusion create_model with I2SB's 256x256_diffusion_uncond_fixedsigma settings)."""
    return ADMUNet(**{**ADM256_CONFIG, **overrides})


def adm_tiny(**overrides: Any) -> ADMUNet:
    """A tiny ADM with the same structure, for tests (32x32 images, widths 32/64/64, attention at 8x8)."""
    return ADMUNet(**{**TINY_CONFIG, **overrides})
