"""RCSB's classifier-guided, region-constrained sampler (the counterfactual generator).

RCSB (Region-Constrained Counterfactual Schroedinger Bridges) inpaints a region of an image with an I2SB bridge
trained for inpainting, run as an OT-ODE, while steering every step towards a target class B with the gradient of
the classifier's log-probability. Outside the region the result is the original image, bit for bit.

One step, from step ``t`` to ``prev`` (all four improvements of the paper can be switched off for its ablation):

1. x0_hat = x_t - std_fwd[t] * net(x_t, t) (Tweedie's estimate of the clean image);
2. g = d/dx_t log softmax(f(c(x0_hat)))[B], back-propagated through the network (``tweedie=False``: f sees x_t);
   c maps the bridge's [-1, 1] to the classifier's [0, 1]: (x + 1) / 2 (``clf_input="affine"``) or the authors'
   per-image min-max stretch (``clf_input="minmax"``, see :func:`classifier_input`);
3. ADAM stabilisation of g (``adam``; bias-corrected, a fresh state per trajectory);
4. adaptive normalisation (``normalise``): divide by the per-image norm of the first update, kept for the run;
5. x_t <- x_t + scale * update, then x_prev = p_posterior(prev, t, x_t, x0_hat) (OT-ODE);
6. x_prev <- (1 - R) x_start + R x_prev: outside the region R the trajectory holds the original image.

The trajectory starts from the bridge marginal at ``start - 1`` between the image and its inpainting corruption
(trajectory truncation; ``start = interval`` starts from the corruption x1 itself) and walks ``nfe`` steps to 0.
Images are in [0, 1] here; the bridge works in [-1, 1] (I2SB's convention), converted at the boundary.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcsb.bridge import BridgeSchedule, inpainting_x1, p_posterior, predict_x0, q_sample, sample_steps

__all__ = ["CLF_INPUTS", "AdamStabilizer", "adaptive_normalise", "classifier_input", "rcsb_sample", "to_bridge",
           "from_bridge"]

#: How the classifier sees a bridge-space image: "affine" ((x + 1) / 2) or "minmax" (per-image min-max stretch).
CLF_INPUTS = ("affine", "minmax")

#: ``on_step(step, prev, x_t, x0_hat, grad, update)``: called once per step (after the update is formed), for tracing.
StepCallback = Callable[[int, int, Tensor, Tensor, Tensor, Tensor], None]


def to_bridge(images: Tensor) -> Tensor:
    """Images in [0, 1] -> the bridge's [-1, 1]."""
    return images * 2 - 1


def from_bridge(x: Tensor) -> Tensor:
    """The bridge's [-1, 1] -> images in [0, 1] (not clamped)."""
    return (x + 1) / 2


class AdamStabilizer:
    """ADAM's update rule applied to a sequence of gradients (RCSB's "ADAM stabilization").

    ``step(g)`` returns ``m_hat / (sqrt(v_hat) + eps)`` with ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``m_hat = m / (1 - b1^k)``, ``v_hat = v / (1 - b2^k)`` at the k-th call. The moments are elementwise, so a batch
    (B, ...) keeps one independent state per image; ``reset()`` starts a new trajectory.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"ADAM betas must lie in [0, 1), got beta1={beta1}, beta2={beta2}")
        if not eps > 0:
            raise ValueError(f"ADAM eps must be positive, got {eps}")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.reset()

    def reset(self) -> None:
        """Forget the moments and the step count (a new image or trajectory)."""
        self.m: Optional[Tensor] = None
        self.v: Optional[Tensor] = None
        self.steps = 0

    def step(self, grad: Tensor) -> Tensor:
        """The bias-corrected ADAM update for ``grad`` (same shape), updating the state."""
        if self.m is None:
            self.m = torch.zeros_like(grad)
            self.v = torch.zeros_like(grad)
        elif self.m.shape != grad.shape:
            raise ValueError(
                f"gradient of shape {tuple(grad.shape)} after gradients of shape {tuple(self.m.shape)}; "
                "call reset() before a new batch of images"
            )
        self.steps += 1
        self.m = self.m.mul(self.beta1).add_(grad, alpha=1 - self.beta1)
        self.v = self.v.mul(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        m_hat = self.m / (1 - self.beta1**self.steps)
        v_hat = self.v / (1 - self.beta2**self.steps)
        return m_hat / (v_hat.sqrt() + self.eps)

    __call__ = step


def adaptive_normalise(update: Tensor, first_norm: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """RCSB's adaptive normalisation: ``(update / norm, norm)`` per image.

    ``norm`` (B,) is ``first_norm`` when given, else the per-image L2 norm of this ``update`` (the first one of a
    trajectory: store the returned norm and pass it back at every later step). A zero norm (an image whose first
    update vanished) is replaced by 1, so that image is left unnormalised rather than divided by zero.
    """
    if first_norm is None:
        first_norm = update.detach().flatten(1).norm(dim=1)
        first_norm = torch.where(first_norm > 0, first_norm, torch.ones_like(first_norm))
    if first_norm.shape != (update.shape[0],):
        raise ValueError(f"first_norm must have shape ({update.shape[0]},), got {tuple(first_norm.shape)}")
    scale = first_norm.to(update.dtype).reshape(-1, *([1] * (update.ndim - 1)))
    return update / scale, first_norm


def classifier_input(x: Tensor, mode: str = "affine") -> Tensor:
    """RCSB's classifier input f(x0_hat(x_t)) (Sobieski et al. 2025, "Tweedie's formula"): [-1, 1] mapped to [0, 1].

    "affine" is (x + 1) / 2; "minmax" stretches each image to its own [min, max] -> [0, 1] (the authors'
    ``from_m1p1_to_01``), differentiable through the min and max like theirs. A constant image maps to 0.
    """
    if mode == "affine":
        return from_bridge(x)
    if mode == "minmax":
        flat = x.flatten(1)
        shape = (-1, *([1] * (x.ndim - 1)))
        low, high = flat.amin(1).view(shape), flat.amax(1).view(shape)
        return (x - low) / (high - low).clamp_min(torch.finfo(x.dtype).tiny)
    raise ValueError(f"clf_input must be one of {', '.join(CLF_INPUTS)}, got {mode!r}")


def _region_mask(region: Tensor, images: Tensor) -> Tensor:
    if region.dtype != torch.bool:
        if not bool(((region == 0) | (region == 1)).all()):
            raise ValueError("region must be a bool or 0/1 mask (1 = pixels the counterfactual may change)")
        region = region != 0
    b, _, h, w = images.shape
    if region.ndim == 3:
        region = region[:, None]
    if region.ndim != 4 or region.shape[1] != 1 or region.shape[-2:] != (h, w) or region.shape[0] not in (1, b):
        raise ValueError(f"region must be (B, 1, H, W) = ({b}, 1, {h}, {w}) (or (1, 1, H, W)), got {tuple(region.shape)}")
    return region.to(images.device).expand(b, 1, h, w)


def _targets(target: Union[int, Tensor], batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(target, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target must be a class index or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t


def rcsb_sample(
    bridge_net: nn.Module,
    schedule: BridgeSchedule,
    classifier: nn.Module,
    images: Tensor,
    region: Tensor,
    target: Union[int, Tensor],
    *,
    nfe: int = 100,
    start: int = 650,
    scale: float = 1.5,
    tweedie: bool = True,
    adam: bool = True,
    normalise: bool = True,
    clf_input: str = "affine",
    generator: Optional[torch.Generator] = None,
    on_step: Optional[StepCallback] = None,
) -> Tensor:
    """RCSB: region-constrained counterfactuals of ``images`` towards class ``target`` (batched, one state per image).

    Args:
        bridge_net: the inpainting bridge network, ``(x in [-1, 1], time input) -> eps``; used frozen.
        schedule: its bridge schedule (the network's time input is ``schedule.time_input(step)``).
        classifier: images in [0, 1] -> logits; used frozen (only d/dx_t is computed).
        images: (B, 3, H, W) in [0, 1], the factual images x*.
        region: (B, 1, H, W) bool (or (1, 1, H, W)): where the counterfactual may differ from the image.
        target: the counterfactual class B, an int or (B,) indices.
        nfe: network evaluations (steps) of the trajectory, 1 <= nfe <= start - 1.
        start: trajectory truncation: the walk starts at step ``start - 1`` of the schedule's ``interval``
            (``start = interval``: no truncation, start from the corruption x1).
        scale: the guidance scale s.
        tweedie: the classifier sees Tweedie's x0_hat(x_t) (else x_t itself).
        adam: ADAM stabilisation of the gradients (else the raw gradient).
        normalise: adaptive normalisation by the first update's per-image norm (else the raw scale).
        clf_input: how the classifier sees the bridge's [-1, 1] images: "affine" ((x + 1) / 2) or "minmax" (the
            authors' per-image min-max stretch to [0, 1]), see :func:`classifier_input`.
        generator: RNG of the inpainting noise x1 (the OT-ODE walk itself is deterministic).
        on_step: optional ``(step, prev, x_t, x0_hat, grad, update)`` callback per step, for tracing.

    Returns:
        (B, 3, H, W) counterfactuals in [0, 1], detached; pixels outside ``region`` are those of ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    interval = schedule.interval
    if isinstance(start, (np.integer, Tensor)) and not isinstance(start, bool):
        start = int(start)
    if isinstance(start, bool) or not isinstance(start, int) or not 2 <= start <= interval:
        raise ValueError(f"start must be an int in [2, {interval}] (the schedule's interval = no truncation), got {start!r}")
    steps = sample_steps(start, nfe)  # validates nfe against start
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    if clf_input not in CLF_INPUTS:
        raise ValueError(f"clf_input must be one of {', '.join(CLF_INPUTS)}, got {clf_input!r}")
    b = images.shape[0]
    images = images.detach()
    region = _region_mask(region, images)
    target = _targets(target, b, images.device)
    rows = torch.arange(b, device=images.device)

    x_start = to_bridge(images)
    x1 = inpainting_x1(x_start, region, generator)
    x = x1 if start == interval else q_sample(schedule, start - 1, x_start, x1)
    x = torch.where(region, x, x_start)

    stabiliser = AdamStabilizer() if adam else None
    first_norm: Optional[Tensor] = None

    def log_prob(seen: Tensor) -> Tensor:
        logits = classifier(classifier_input(seen, clf_input))
        if logits.ndim != 2 or logits.shape[0] != b:
            raise ValueError(f"the classifier must return logits (B, classes) = ({b}, C), got {tuple(logits.shape)}")
        return F.log_softmax(logits.float(), dim=1)[rows, target]

    with torch.enable_grad():
        for prev, step in zip(reversed(steps[:-1]), reversed(steps[1:])):
            x_t = x.detach().requires_grad_(scale > 0)
            t_in = schedule.time_input(step, b).to(x_t.device)
            if scale == 0:  # the unguided control: the bridge's inpainting alone, no classifier call
                with torch.no_grad():
                    x0_hat = predict_x0(schedule, x_t, step, bridge_net(x_t, t_in))
                if on_step is not None:
                    zero = torch.zeros_like(x_t)
                    on_step(step, prev, x_t, x0_hat, zero, zero)
                x = torch.where(region, p_posterior(schedule, prev, step, x_t, x0_hat), x_start)
                continue
            if tweedie:
                x0_hat = predict_x0(schedule, x_t, step, bridge_net(x_t, t_in))
                seen = x0_hat
            else:
                with torch.no_grad():
                    x0_hat = predict_x0(schedule, x_t, step, bridge_net(x_t, t_in))
                seen = x_t
            (grad,) = torch.autograd.grad(log_prob(seen).sum(), [x_t])
            x_t, x0_hat = x_t.detach(), x0_hat.detach()
            update = stabiliser.step(grad) if stabiliser is not None else grad
            if normalise:
                update, first_norm = adaptive_normalise(update, first_norm)
            if on_step is not None:
                on_step(step, prev, x_t, x0_hat, grad, update)
            x_prev = p_posterior(schedule, prev, step, x_t + scale * update, x0_hat)
            x = torch.where(region, x_prev, x_start)

    out = from_bridge(x).clamp(0.0, 1.0)
    return torch.where(region, out, images).detach()  # exact copy outside the region ([0, 1] round trips are not)
