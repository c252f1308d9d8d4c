"""I2SB bridge maths as pure tensor functions (no network inside).

RCSB (Region-Constrained Counterfactual Schroedinger Bridges) samples with the OT-ODE version of an
I2SB model trained for inpainting. This module holds only the bridge: the noise schedule, the
marginal ``q(x_t | x_0, x_1)``, the posterior ``p(x_{n'} | x_n, x_0)``, the training label, the
x0 parametrisation and a generic sampling loop. The network is passed in as a function
``predict_x0_fn(x_t, step) -> x0_hat``, so the same loop serves the plain I2SB sampler and the
classifier-guided RCSB sampler (through ``step_hook``).

Conventions (as in NVlabs/I2SB):

* ``step`` indexes the discrete schedule, ``0 <= step < interval``; step 0 is the clean end
  (x0), step ``interval - 1`` the corrupted end (x1).
* Images are batched ``(B, ...)``; a step is either a Python ``int`` (same for the whole batch) or
  a ``(B,)`` integer tensor (one per image, used in training).
* The schedule is computed in float64 and stored as float32 tensors; coefficients are moved to the
  device and dtype of the images at each call, so the schedule may stay on the CPU.
* ``ot_ode=True`` (the RCSB setting, and how NVlabs trained the inpainting checkpoints) drops
  every noise term and makes the whole chain deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Step = Union[int, Tensor]
PredictX0Fn = Callable[[Tensor, int], Tensor]
StepHook = Callable[[Tensor, int, int, Tensor], Optional[Tensor]]

__all__ = [
    "BridgeSchedule",
    "bridge_sample",
    "inpainting_loss",
    "inpainting_x1",
    "make_betas",
    "p_posterior",
    "predict_x0",
    "q_sample",
    "sample_steps",
    "training_target",
]


def make_betas(interval: int = 1000, beta_max: float = 1.0, beta_min: float = 1e-4, mirrored: bool = True) -> Tensor:
    """I2SB runner.make_beta_schedule: betas = linspace(sqrt(beta_min), sqrt(beta_max/interval))^2, mirrored, float64."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 2:
        raise ValueError(f"interval must be an int >= 2, got {interval!r}")
    if mirrored and interval % 2:
        raise ValueError(f"a mirrored schedule needs an even interval (it concatenates two halves), got {interval}")
    if not (beta_min > 0 and beta_max > 0):
        raise ValueError(f"beta_min and beta_max must be positive, got beta_min={beta_min}, beta_max={beta_max}")
    betas = torch.linspace(beta_min**0.5, (beta_max / interval) ** 0.5, interval, dtype=torch.float64) ** 2
    if mirrored:  # symmetric schedule: rises over the first half, falls back over the second
        half = betas[: interval // 2]
        betas = torch.cat([half, half.flip(0)])
    return betas


@dataclass(frozen=True, eq=False, repr=False)
class BridgeSchedule:
    """I2SB eq. 11 (Diffusion.__init__): analytic stds and Gaussian-product coefficients per step.

    All fields are float32 tensors of shape ``(interval,)``:

    * ``betas``: the per-step diffusion.
    * ``std_fwd``: sqrt(cumsum(betas)), the std of x_t given x0 (forward marginal).
    * ``std_bwd``: sqrt(reverse cumsum(betas)), the std of x_t given x1 (backward marginal).
    * ``mu_x0``, ``mu_x1``, ``std_sb``: mean coefficients and std of the bridge marginal
      q(x_t | x0, x1) = N(mu_x0 x0 + mu_x1 x1, std_sb^2), the product of the two Gaussians.
    * ``time_levels``: the network's time input per step, linspace(t0, t_end, interval) * interval.
    """

    betas: Tensor
    std_fwd: Tensor
    std_bwd: Tensor
    mu_x0: Tensor
    mu_x1: Tensor
    std_sb: Tensor
    time_levels: Tensor

    @classmethod
    def from_betas(
        cls, betas: Union[Tensor, np.ndarray, Sequence[float]], t0: float = 1e-4, t_end: float = 1.0
    ) -> "BridgeSchedule":
        """I2SB eq. 11: std_fwd, std_bwd and their Gaussian product (compute_gaussian_product_coef), from float64 betas."""
        if isinstance(betas, Tensor):
            b = betas.detach().to("cpu", torch.float64)
        else:
            b = torch.from_numpy(np.ascontiguousarray(betas, dtype=np.float64))
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError(f"betas must be a 1-D sequence of at least 2 values, got shape {tuple(b.shape)}")
        if not bool((b > 0).all()):
            raise ValueError("betas must all be positive")
        var_fwd = b.cumsum(0)
        var_bwd = b.flip(0).cumsum(0).flip(0)
        denom = var_fwd + var_bwd
        interval = b.numel()
        # I2SB Runner: noise_levels = torch.linspace(t0, T, interval) * interval (float32)
        time_levels = torch.linspace(t0, t_end, interval, dtype=torch.float32) * interval
        f32 = lambda v: v.to(torch.float32)  # noqa: E731
        return cls(
            betas=f32(b),
            std_fwd=f32(var_fwd.sqrt()),
            std_bwd=f32(var_bwd.sqrt()),
            mu_x0=f32(var_bwd / denom),
            mu_x1=f32(var_fwd / denom),
            std_sb=f32((var_fwd * var_bwd / denom).sqrt()),
            time_levels=time_levels,
        )

    @classmethod
    def i2sb(cls, interval: int = 1000, beta_max: float = 1.0, t0: float = 1e-4, t_end: float = 1.0) -> "BridgeSchedule":
        """I2SB Runner.__init__: mirrored schedule with linear_end = beta_max / interval (beta_max 1.0 for inpainting)."""
        return cls.from_betas(make_betas(interval, beta_max), t0=t0, t_end=t_end)

    def __repr__(self) -> str:
        return (
            f"BridgeSchedule(interval={self.interval}, std_fwd=[{self.std_fwd[0].item():.4f} .. "
            f"{self.std_fwd[-1].item():.4f}], max std_sb={self.std_sb.max().item():.4f}, device={self.betas.device})"
        )

    @property
    def interval(self) -> int:
        """Number of discrete steps T (I2SB opt.interval)."""
        return self.betas.numel()

    def time_input(self, step: Step, batch_size: Optional[int] = None) -> Tensor:
        """I2SB Image256Net.forward: the network's time input noise_levels[step] = linspace(t0, t_end, T)[step] * T.

        An int ``step`` gives a 0-d tensor, or a ``(batch_size,)`` one when ``batch_size`` is given;
        a ``(B,)`` step tensor gives ``(B,)`` values on the step tensor's device.
        """
        if isinstance(step, Tensor):
            return self.time_levels.to(step.device)[step]
        _check_step(step, self.interval, "step")
        value = self.time_levels[step]
        return value if batch_size is None else value.expand(batch_size).clone()

    def to(self, device: Union[str, torch.device]) -> "BridgeSchedule":
        """Copy of the schedule with every table on ``device`` (avoids per-call host-to-device copies)."""
        return BridgeSchedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


# --------------------------------------------------------------------------- helpers


def _check_step(step: int, interval: int, name: str) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"{name} must be an int or an integer tensor, got {type(step).__name__}")
    if not 0 <= step < interval:
        raise ValueError(f"{name}={step} is outside the schedule [0, {interval})")


def _at(table: Tensor, step: Step, like: Tensor, name: str = "step") -> Tensor:
    """table[step] on like's device/dtype, broadcastable against ``like`` (per-image steps become (B, 1, 1, ...))."""
    table = table.to(device=like.device, dtype=like.dtype)
    if isinstance(step, Tensor):
        if step.dtype.is_floating_point or step.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer step indices, got dtype {step.dtype}")
        if step.ndim == 0:
            return table[step.to(like.device)]
        if step.ndim != 1 or step.shape[0] != like.shape[0]:
            raise ValueError(f"{name} must be an int or a ({like.shape[0]},) tensor, got shape {tuple(step.shape)}")
        return table[step.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))
    _check_step(step, table.numel(), name)
    return table[int(step)]


def _noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _hole(mask: Tensor, like: Tensor) -> Tensor:
    """Boolean hole indicator (True = pixel to generate) from a bool or 0/1 mask broadcastable to ``like``."""
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be binary (bool, or 0/1 values; 1 = hole to inpaint)")
        mask = mask != 0
    try:
        torch.broadcast_shapes(mask.shape, like.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to images of shape {tuple(like.shape)}") from None
    return mask.to(like.device)


# --------------------------------------------------------------------------- bridge


def q_sample(
    schedule: BridgeSchedule,
    step: Step,
    x0: Tensor,
    x1: Tensor,
    *,
    ot_ode: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """I2SB eq. 11 (Diffusion.q_sample): x_t = mu_x0 x0 + mu_x1 x1 (+ std_sb * noise unless ot_ode)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    x_t = _at(schedule.mu_x0, step, x0) * x0 + _at(schedule.mu_x1, step, x0) * x1
    if not ot_ode:
        x_t = x_t + _at(schedule.std_sb, step, x0) * _noise_like(x0, generator)
    return x_t


def p_posterior(
    schedule: BridgeSchedule,
    n_prev: int,
    n: int,
    x_n: Tensor,
    x0: Tensor,
    *,
    ot_ode: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """I2SB eq. 4 (Diffusion.p_posterior): sample p(x_{n_prev} | x_n, x0), a DDPM posterior on the forward marginals.

    With v_n = std_fwd[n]^2 and v_p = std_fwd[n_prev]^2:
    mean = (v_n - v_p)/v_n * x0 + v_p/v_n * x_n, variance = v_p (v_n - v_p)/v_n.
    The noise is skipped under ``ot_ode`` and at ``n_prev == 0`` (the last step is deterministic).
    Note std_fwd[0] > 0, so even at n_prev = 0 the result keeps a weight v_0/v_n on x_n.
    """
    _check_step(n, schedule.interval, "n")
    _check_step(n_prev, schedule.interval, "n_prev")
    if not n_prev < n:
        raise ValueError(f"p_posterior steps backwards: need n_prev < n, got n_prev={n_prev}, n={n}")
    if x_n.shape != x0.shape:
        raise ValueError(f"x_n and x0 must have the same shape, got {tuple(x_n.shape)} and {tuple(x0.shape)}")
    var_n = float(schedule.std_fwd[n]) ** 2  # Python floats: float64 maths, any device and dtype for the images
    var_p = float(schedule.std_fwd[n_prev]) ** 2
    var_delta = var_n - var_p
    x_prev = (var_delta / var_n) * x0 + (var_p / var_n) * x_n
    if not ot_ode and n_prev > 0:
        x_prev = x_prev + (var_p * var_delta / var_n) ** 0.5 * _noise_like(x0, generator)
    return x_prev


def training_target(schedule: BridgeSchedule, step: Step, x0: Tensor, x_t: Tensor) -> Tensor:
    """I2SB eq. 12 (Runner.compute_label): the regression label (x_t - x0) / std_fwd[step]."""
    return (x_t - x0) / _at(schedule.std_fwd, step, x_t)


def predict_x0(schedule: BridgeSchedule, x_t: Tensor, step: Step, eps: Tensor, *, clip_denoise: bool = False) -> Tensor:
    """Inverse of I2SB eq. 12 (Runner.compute_pred_x0): x0_hat = x_t - std_fwd[step] * eps, optionally clamped to [-1, 1]."""
    x0_hat = x_t - _at(schedule.std_fwd, step, x_t) * eps
    return x0_hat.clamp(-1.0, 1.0) if clip_denoise else x0_hat


def inpainting_x1(x0: Tensor, mask: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """I2SB inpainting prior (Runner.sample_batch): x1 = (1 - m) x0 + m N(0, I), m = 1 on the hole.

    ``mask`` is bool or 0/1 and broadcasts to ``x0`` (e.g. (B, 1, H, W)); pixels outside the
    hole are copied bit-for-bit from ``x0``.
    """
    hole = _hole(mask, x0)
    return torch.where(hole, _noise_like(x0, generator), x0)


def inpainting_loss(pred: Tensor, label: Tensor, mask: Tensor) -> Tensor:
    """I2SB Runner.train: MSE between network output and label on the hole only (mask*pred vs mask*label, mean over all)."""
    m = mask.to(device=pred.device, dtype=pred.dtype)
    return F.mse_loss(m * pred, m * label)


def sample_steps(start: int, nfe: Optional[int] = None) -> list[int]:
    """I2SB Runner.ddpm_sampling / util.space_indices: nfe+1 evenly spaced integer steps from 0 to start-1, ascending.

    ``start`` is the number of schedule steps the chain covers (the schedule's interval for a full
    run, fewer for a truncated trajectory); ``nfe`` (default ``start - 1``) is the number of network
    evaluations, 1 <= nfe <= start - 1. E.g. ``sample_steps(1000, 2) == [0, 500, 999]``.
    """
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 2:
        raise ValueError(f"start must be an int >= 2 (steps lie in [0, start)), got {start!r}")
    start = int(start)
    if nfe is None:
        nfe = start - 1
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or not 1 <= nfe <= start - 1:
        raise ValueError(f"nfe must be an int in [1, start - 1] = [1, {start - 1}], got {nfe!r}")
    stride = (start - 1) / int(nfe)
    steps, cur = [], 0.0
    for _ in range(int(nfe) + 1):  # accumulate like util.space_indices so ties round identically
        steps.append(round(cur))
        cur += stride
    return steps


def _validate_steps(steps: Sequence[int], interval: int) -> list[int]:
    if isinstance(steps, Tensor):
        steps = steps.tolist()
    steps = [int(s) for s in steps]
    if len(steps) < 2:
        raise ValueError(f"steps needs at least 2 entries (0 and a start step), got {steps}")
    if steps[0] != 0:
        raise ValueError(f"steps must start at 0 (the clean end) in ascending order, got {steps[:4]}...")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("steps must be strictly increasing (they are walked backwards while sampling)")
    if steps[-1] >= interval:
        raise ValueError(f"last step {steps[-1]} is outside the schedule [0, {interval})")
    return steps


def bridge_sample(
    schedule: BridgeSchedule,
    predict_x0_fn: PredictX0Fn,
    x1: Tensor,
    steps: Sequence[int],
    *,
    ot_ode: bool = True,
    generator: Optional[torch.Generator] = None,
    step_hook: Optional[StepHook] = None,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """I2SB Diffusion.ddpm_sampling: walk ``steps`` backwards from x1 with x_prev ~ p_posterior(prev, step, x_t, x0_hat).

    Args:
        schedule: the bridge schedule.
        predict_x0_fn: ``(x_t, step) -> x0_hat`` for an int ``step`` (wrap the network, e.g.
            ``predict_x0(schedule, x, s, net(x, schedule.time_input(s, len(x))))``).
        x1: the starting state at ``steps[-1]`` (for inpainting, ``inpainting_x1(x0, mask)``).
        steps: ascending step indices starting at 0, e.g. ``sample_steps(interval, nfe)``.
        ot_ode: deterministic OT-ODE sampling (the RCSB setting); False adds posterior noise.
        generator: RNG for the posterior noise (unused under ``ot_ode``).
        step_hook: optional ``(x_t, step, prev, x0_hat) -> x_prev or None``, called once per step
            after ``predict_x0_fn``. Returning a tensor replaces that step's posterior sample (the
            hook may call ``p_posterior`` itself with a guided x0_hat); returning None keeps the
            default. It can also just record the trajectory.
        mask: optional hole mask (1 = generate). As in I2SB, after each step the pixels outside the
            hole are reset to x1 (plus std_sb[prev] noise when not ``ot_ode``), after the hook.

    Returns:
        The state at step 0. Grad mode is left to the caller (wrap in ``torch.no_grad()`` for
        plain sampling; the guided sampler needs gradients inside the hook).
    """
    steps = _validate_steps(steps, schedule.interval)
    hole = _hole(mask, x1) if mask is not None else None
    x_t = x1
    for prev, step in zip(reversed(steps[:-1]), reversed(steps[1:])):
        x0_hat = predict_x0_fn(x_t, step)
        x_prev = step_hook(x_t, step, prev, x0_hat) if step_hook is not None else None
        if x_prev is None:
            x_prev = p_posterior(schedule, prev, step, x_t, x0_hat, ot_ode=ot_ode, generator=generator)
        if hole is not None:
            known = x1 if ot_ode else x1 + _at(schedule.std_sb, prev, x1) * _noise_like(x1, generator)
            x_prev = torch.where(hole, x_prev, known)
        x_t = x_prev
    return x_t
