"""Bridge stage: an I2SB inpainting bridge (ADM U-Net) trained on the data's images, with EMA weights for sampling.

Training (I2SB Runner.train, inpainting): x0 is the image in [-1, 1], x1 its corruption (noise in a training mask,
see :func:`rcsb.regions.training_masks`), a step uniform in [0, T), x_t the bridge marginal between them, and the
network regresses ``training_target`` on the masked area (``inpainting_loss``). AdamW without weight decay, the
rate decayed by I2SB's StepLR (0.99 every 1000 steps); an EMA copy of the network (kept in this module's
state_dict, so checkpoints carry it) is what validation, sampling and RCSB use by default
(:meth:`BridgeModule.denoiser`; the raw network is the other choice).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Optional, Sequence, Union

import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn

from explainers.figures import image_to_array
from models.stages import StageModule, register_stage
from rcsb.bridge import BridgeSchedule, bridge_sample, inpainting_loss, inpainting_x1, predict_x0, q_sample
from rcsb.bridge import sample_steps, training_target
from rcsb.checkpoints import load_i2sb_pair, load_openai_adm, resolve_adm_checkpoint
from rcsb.guidance import from_bridge, to_bridge
from rcsb.network import ADM256_CONFIG, TINY_CONFIG, ADMUNet
from rcsb.regions import MASK_FAMILIES, mask_bank, training_masks

__all__ = ["PRESETS", "BridgeModule", "build_network"]

PRESETS: dict[str, dict[str, Any]] = {"tiny": TINY_CONFIG, "adm256": ADM256_CONFIG}


def build_network(network: Union[str, dict[str, Any]], image_size: int) -> ADMUNet:
    """An ADM U-Net from a preset name ("tiny", "adm256") or a dict of ADMUNet arguments over a preset
    (``{"preset": "tiny", "channel_mult": [1, 1, 2, 2], ...}``; the preset defaults to "tiny")."""
    if isinstance(network, str):
        network = {"preset": network}
    if not isinstance(network, dict):
        raise ValueError(f"network must be a preset name ({', '.join(PRESETS)}) or a dict of ADMUNet arguments, "
                         f"got {network!r}")
    overrides = dict(network)
    preset = overrides.pop("preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **overrides, "image_size": image_size}
    for key in ("attention_resolutions", "channel_mult"):
        config[key] = tuple(config[key])
    try:
        net = ADMUNet(**config)
    except TypeError as err:
        raise ValueError(f"bad network arguments {sorted(overrides)}: {err}") from None
    factor = 2 ** (len(net.channel_mult) - 1)
    if image_size % factor:
        raise ValueError(f"image_size={image_size} must be divisible by {factor} for a network with "
                         f"{len(net.channel_mult)} resolution levels")
    return net


@register_stage("bridge")
class BridgeModule(StageModule):
    """RCSB's bridge: an I2SB inpainting bridge with an EMA copy of its network (what sampling uses).

    Args:
        network: a preset name ("tiny": 1.4M parameters; "adm256": I2SB's 552M ADM) or a dict of ADMUNet arguments
            over a preset (key "preset", default "tiny").
        image_size: the square image side the bridge trains and samples at.
        interval: the number of schedule steps T (I2SB: 1000).
        beta_max: the schedule's peak diffusion (I2SB inpainting: 1.0).
        ot_ode: train on the deterministic OT-ODE bridge marginal (how I2SB's inpainting models were trained).
        lr: AdamW learning rate (no weight decay), I2SB's 5e-5 by default.
        lr_step, lr_gamma: I2SB's learning-rate decay (``--lr-step``, ``--lr-gamma``): StepLR, the rate multiplied by
            ``lr_gamma`` every ``lr_step`` optimiser steps (1000 and 0.99, stepped per iteration); ``lr_gamma=1``
            keeps the rate constant.
        ema_decay: decay of the EMA weights.
        ema_warmup: torch_ema's (and so I2SB's) warm-up: decay min(ema_decay, (1 + n) / (10 + n)) at update n.
        val_samples: images inpainted with the EMA weights and logged to W&B at each validation (0: none).
        nfe: sampling steps of those validation samples.
        val_steps: the fixed schedule steps at which validation measures the masked x0 error (default T/4, T/2, 3T/4).
        mask_families: the training mask families (see :data:`rcsb.regions.MASK_FAMILIES`).
        mask_bank: draw the training masks from a fixed bank of this many, built once when fitting starts
            (:func:`rcsb.regions.mask_bank`, as I2SB trains on fixed mask sets); 0 draws every mask afresh, which
            costs CPU time at every step.
        seed: seed of the training and validation mask generators.
        pretrained: start the network (and its EMA copy) from guided-diffusion's 256x256 unconditional ADM, as I2SB
            does: "openai" (the torch hub cache's ``256x256_diffusion_uncond.pt``, downloaded there when missing) or
            the file's path; None starts from random weights. Needs the ``adm256`` network (or one of the file's
            widths); offline without the file it stops at once with the ways out
            (:func:`rcsb.checkpoints.resolve_adm_checkpoint`). Ignored when a bridge checkpoint is rebuilt.
    """

    monitor = ("val/loss", "min")
    load_overrides = {"pretrained": None}

    def __init__(
        self,
        network: Union[str, dict[str, Any]] = "tiny",
        image_size: int = 64,
        interval: int = 1000,
        beta_max: float = 1.0,
        ot_ode: bool = True,
        lr: float = 5e-5,
        lr_step: int = 1000,
        lr_gamma: float = 0.99,
        ema_decay: float = 0.99,
        ema_warmup: bool = True,
        val_samples: int = 4,
        nfe: int = 20,
        val_steps: Optional[Sequence[int]] = None,
        mask_families: Sequence[str] = MASK_FAMILIES,
        mask_bank: int = 0,
        seed: int = 0,
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if isinstance(lr_step, bool) or not isinstance(lr_step, int) or lr_step < 1:
            raise ValueError(f"lr_step must be a positive int (optimiser steps between decays), got {lr_step!r}")
        if not 0.0 < lr_gamma <= 1.0:
            raise ValueError(f"lr_gamma must lie in (0, 1] (1: no decay), got {lr_gamma}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if mask_bank < 0:
            raise ValueError(f"mask_bank must be >= 0 (0: no bank), got {mask_bank}")
        if val_samples < 0:
            raise ValueError(f"val_samples must be >= 0, got {val_samples}")
        unknown = [f for f in mask_families if f not in MASK_FAMILIES]
        if unknown or not mask_families:
            raise ValueError(f"unknown mask families {unknown or list(mask_families)}; "
                             f"choose from {', '.join(MASK_FAMILIES)}")
        self.schedule = BridgeSchedule.i2sb(interval=interval, beta_max=beta_max)
        sample_steps(interval, nfe)  # validates nfe
        val_steps = [interval // 4, interval // 2, 3 * interval // 4] if val_steps is None else [int(s) for s in val_steps]
        if not val_steps or any(not 0 <= s < interval for s in val_steps):
            raise ValueError(f"val_steps must be steps in [0, {interval}), got {val_steps}")
        self.save_hyperparameters()
        self.val_steps = val_steps
        adm_file = resolve_adm_checkpoint(pretrained) if pretrained is not None else None
        self.net = build_network(network, image_size)
        if adm_file is not None:
            load_openai_adm(adm_file, self.net)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._train_generator: Optional[torch.Generator] = None
        self._bank: Optional[Tensor] = None
        self._schedules: dict[torch.device, BridgeSchedule] = {}

    # ------------------------------------------------------------------ building blocks

    @classmethod
    def from_i2sb(cls, path: Union[str, os.PathLike], network: Union[str, dict[str, Any]] = "adm256",
                  image_size: int = 256, **kwargs: Any) -> "BridgeModule":
        """A bridge stage holding a released NVlabs I2SB checkpoint: its raw 'net' weights in ``net``, its EMA in
        ``ema`` (a file with one of them fills both), so that sampling can use either (:meth:`denoiser`)."""
        module = cls(network=network, image_size=image_size, **kwargs)
        load_i2sb_pair(path, module.net, module.ema)
        return module

    def schedule_on(self, device: torch.device) -> BridgeSchedule:
        """The schedule with its tables on ``device`` (cached)."""
        device = torch.device(device)
        if device not in self._schedules:
            self._schedules[device] = self.schedule.to(device)
        return self._schedules[device]

    def denoiser(self, ema: bool = True) -> nn.Module:
        """The network (x in [-1, 1], time input) -> eps that sampling and RCSB use: the EMA weights in eval mode (as
        I2SB samples, the default) or the raw trained ones (``ema=False``, in the module's own mode; what the RCSB
        authors' code loads: ``checkpoint['net']``)."""
        return self.ema.eval() if ema else self.net

    def train(self, mode: bool = True) -> "BridgeModule":
        super().train(mode)
        self.ema.eval()  # the EMA copy is never trained
        return self

    def forward(self, x: Tensor, step: Union[int, Tensor], ema: bool = False) -> Tensor:
        """The network output (eps) for x_t in [-1, 1] at schedule step(s) ``step`` (int or (B,))."""
        net = self.ema if ema else self.net
        sched = self.schedule_on(x.device)
        t = sched.time_input(step.to(x.device) if isinstance(step, Tensor) else step, x.shape[0])
        return net(x, t.to(x.device))

    def corrupt(self, images: Tensor, masks: Tensor, steps: Union[int, Tensor],
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x0, x1, x_t) in [-1, 1] for images in [0, 1]: x1 is noise in ``masks``, x_t the bridge marginal at ``steps``."""
        x0 = to_bridge(images)
        x1 = inpainting_x1(x0, masks, generator)
        x_t = q_sample(self.schedule_on(x0.device), steps, x0, x1, ot_ode=self.hparams.ot_ode, generator=generator)
        return x0, x1, x_t

    def loss(self, images: Tensor, masks: Tensor, steps: Tensor, generator: Optional[torch.Generator] = None,
             ema: bool = False) -> Tensor:
        """I2SB's inpainting loss for images in [0, 1], masks (B, 1, H, W) and per-image steps (B,)."""
        x0, _, x_t = self.corrupt(images, masks, steps, generator)
        label = training_target(self.schedule_on(x0.device), steps, x0, x_t)
        return inpainting_loss(self(x_t, steps, ema=ema), label, masks)

    # ------------------------------------------------------------------ training

    def _masks(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return training_masks(images.shape[0], tuple(images.shape[-2:]), generator,
                              families=tuple(self.hparams.mask_families), device=images.device)

    def _check_images(self, images: Tensor) -> None:
        size = self.hparams.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"the bridge trains on (B, 3, {size}, {size}) images (--model.init_args.image_size), "
                             f"got {tuple(images.shape)}; set the data's img_size to match")

    def on_fit_start(self) -> None:
        n = self.hparams.get("mask_bank", 0)
        if n and self._bank is None:
            size = self.hparams.image_size
            self._bank = mask_bank(n, (size, size), self.hparams.seed, tuple(self.hparams.mask_families))

    def _training_masks(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self._bank is None:
            return self._masks(images, generator)
        picks = torch.randint(len(self._bank), (images.shape[0],), generator=generator)
        return self._bank[picks].to(images.device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"]
        self._check_images(images)
        if self._train_generator is None:
            self._train_generator = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_rank)
        masks = self._training_masks(images, self._train_generator)
        steps = torch.randint(0, self.hparams.interval, (images.shape[0],), device=images.device)
        loss = self.loss(images, masks, steps)
        self.log("train/loss", loss, prog_bar=True)
        return self.check_finite(loss)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA update of the EMA weights towards the trained ones (torch_ema's rule, as in I2SB)."""
        self.ema_updates += 1
        decay = self.hparams.ema_decay
        if self.hparams.ema_warmup:
            n = int(self.ema_updates)
            decay = min(decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
        for e, p in zip(self.ema.buffers(), self.net.buffers()):
            e.copy_(p)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema()

    def configure_optimizers(self) -> dict[str, Any]:
        """I2SB's build_optimizer_sched: AdamW without weight decay and StepLR(lr_step, lr_gamma) stepped per
        optimiser step (I2SB steps it once per training iteration)."""
        optimizer = self.adamw(self.net.parameters(), self.hparams.lr, 0.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.hparams.lr_step, self.hparams.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ evaluation

    def eval_generator(self, batch_idx: int) -> torch.Generator:
        """A CPU generator seeded by (seed, batch): evaluation masks and noise are the same at every epoch."""
        return torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + 7919 * (batch_idx + 1))

    @torch.no_grad()
    def masked_x0_errors(self, images: Tensor, batch_idx: int) -> dict[int, Tensor]:
        """Masked MSE (in [-1, 1]) of the EMA network's x0 prediction at each of ``val_steps``, fixed masks and noise."""
        g = self.eval_generator(batch_idx)
        masks = self._masks(images, g)
        noise = torch.randn(images.shape, generator=g).to(images)
        x0 = to_bridge(images)
        x1 = torch.where(masks, noise, x0)
        m = masks.to(x0.dtype).expand_as(x0)
        errors = {}
        for step in self.val_steps:
            sched = self.schedule_on(x0.device)
            x_t = q_sample(sched, step, x0, x1)  # OT-ODE marginal: deterministic
            x0_hat = predict_x0(sched, x_t, step, self(x_t, step, ema=True))
            errors[step] = ((x0_hat - x0) ** 2 * m).sum() / m.sum().clamp_min(1)
        return errors

    @torch.no_grad()
    def inpaint(self, images: Tensor, masks: Tensor, nfe: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """Plain I2SB inpainting with the EMA weights (OT-ODE): (x1, inpainted), both in [0, 1]."""
        sched = self.schedule_on(images.device)
        net = self.denoiser()
        x0 = to_bridge(images)
        if generator is not None and generator.device != x0.device:  # e.g. a CPU generator for images on a GPU
            noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
            x1 = torch.where(masks.to(torch.bool), noise, x0)
        else:
            x1 = inpainting_x1(x0, masks, generator)

        def pred(x: Tensor, step: int) -> Tensor:
            return predict_x0(sched, x, step, net(x, sched.time_input(step, x.shape[0])))

        steps = sample_steps(self.hparams.interval, nfe or self.hparams.nfe)
        out = bridge_sample(sched, pred, x1, steps, mask=masks)
        return from_bridge(x1).clamp(0, 1), from_bridge(out).clamp(0, 1)

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, split: str) -> Tensor:
        images = batch["image"]
        errors = self.masked_x0_errors(images, batch_idx)
        loss = torch.stack(list(errors.values())).mean()
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=True)
        for step, err in errors.items():
            self.log(f"{split}/x0_mse_step{step}", err, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._evaluate(batch, batch_idx, "val")
        if batch_idx == 0:
            self._log_samples(batch["image"])
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, batch_idx, "test")

    def _log_samples(self, images: Tensor) -> None:
        """(original | x1 | inpainted) strips of the first ``val_samples`` images, to W&B only."""
        k = min(self.hparams.val_samples, images.shape[0])
        if k == 0 or not isinstance(self.logger, WandbLogger) or self.trainer.sanity_checking:
            return
        if not self.trainer.is_global_zero:
            return
        g = self.eval_generator(0)
        masks = self._masks(images[:k], g)
        x1, out = self.inpaint(images[:k], masks, generator=g)
        strips = torch.cat([images[:k].clamp(0, 1), x1, out], dim=-1)  # side by side
        self.logger.log_image(
            "val/inpainting", [image_to_array(s) for s in strips],
            caption=[f"original | x1 | inpainted ({int(m.sum())} px masked)" for m in masks],
        )
