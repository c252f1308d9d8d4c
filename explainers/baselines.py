"""Baseline attribution methods compared in ReX section 6 and Salvage section 5.1, in the shared map convention.

Gradient methods come from captum (Saliency, IntegratedGradients, NoiseTunnel, GradientShap), perturbation methods
over the model's patch grid from captum too (KernelShap, Lime, Occlusion), class-activation maps from grad-cam
(GradCAM, EigenCAM; ViT activations reshaped to the patch grid without the prefix tokens). RISE and attention rollout
(with register tokens) are written here because no library offers them in a batched form. Access levels: "white"
needs gradients, "grey" needs internals (activations, attention), "black" only calls model(images) -> logits, here
through `models.queries.QueryEngine` (option `engine`: eager, compiled or ONNX Runtime; the same maps within float
tolerance). Removed pixels take the model's mask value (`models.masking`).
"""
from __future__ import annotations

import math

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainers.protocol import Explanation, explainer
from models.masking import apply_mask, expand_fill, mask_fill
from models.queries import QueryBackend, QueryEngine


def patch_grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    """The model's patch grid (gh, gw); models without one get an 8x8 grid (capped at the image size)."""
    grid = getattr(model, "patch_grid", None)
    if grid is None:
        grid = (min(8, images.shape[-2]), min(8, images.shape[-1]))
    return int(grid[0]), int(grid[1])


def feature_mask(model: nn.Module, images: Tensor) -> Tensor:
    """Patch ids (1, 1, H, W) long: the interpretable features of KernelSHAP / LIME are the model's patches."""
    gh, gw = patch_grid(model, images)
    ids = torch.arange(gh * gw, device=images.device, dtype=torch.float32).view(1, 1, gh, gw)
    return F.interpolate(ids, size=images.shape[-2:], mode="nearest").long()


def _to_patches(attr: Tensor, grid: tuple[int, int]) -> Tensor:
    """Per-pixel attributions (B, 3, H, W), constant on patches, as a patch map (B, gh, gw)."""
    return F.adaptive_avg_pool2d(attr.float().sum(1, keepdim=True), grid)[:, 0]


def _fill(model: nn.Module, images: Tensor) -> Tensor:
    """What a perturbation method puts in place of removed pixels (the model's mask value), shaped like `images`."""
    return expand_fill(mask_fill(model, images=images), images)


def _forward(model: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x)


def _black_box(model: nn.Module, engine: QueryBackend) -> Callable[[Tensor], Tensor]:
    """`images -> logits` of a black-box method under `engine` (`QueryEngine.forward`), one model call per call."""
    return QueryEngine(model, engine=engine).forward


@explainer("saliency", access="white")
def saliency(model: nn.Module, images: Tensor, target: Tensor) -> Explanation:
    """Saliency (Simonyan et al. 2014): max over channels of |d logit_target / d pixel|, pixel map (B, H, W)."""
    from captum.attr import Saliency

    return Explanation(maps=Saliency(_forward(model)).attribute(images, target=target, abs=True).amax(1))


@explainer("integrated_gradients", access="white")
def integrated_gradients(
    model: nn.Module, images: Tensor, target: Tensor, n_steps: int = 32, internal_batch_size: int = 64
) -> Explanation:
    """Integrated Gradients (Sundararajan et al. 2017) from a black baseline, summed over channels: (B, H, W)."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(_forward(model))
    attr = ig.attribute(images, baselines=0.0, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size)
    return Explanation(maps=attr.sum(1))


@explainer("smoothgrad", access="white")
def smoothgrad(
    model: nn.Module, images: Tensor, target: Tensor, nt_samples: int = 8, stdevs: float = 0.1,
    n_steps: int = 16, seed: int = 0,
) -> Explanation:
    """NoiseTunnel: SmoothGrad (Smilkov et al. 2017) over Integrated Gradients, summed over channels: (B, H, W)."""
    from captum.attr import IntegratedGradients, NoiseTunnel

    nt = NoiseTunnel(IntegratedGradients(_forward(model)))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        attr = nt.attribute(
            images, nt_type="smoothgrad", nt_samples=nt_samples, stdevs=stdevs, baselines=0.0, target=target,
            n_steps=n_steps, nt_samples_batch_size=max(1, 64 // n_steps),
        )
    finally:
        torch.random.set_rng_state(state)
    return Explanation(maps=attr.sum(1))


@explainer("gradient_shap", access="white")
def gradient_shap(
    model: nn.Module, images: Tensor, target: Tensor, n_samples: int = 16, n_baselines: int = 8,
    seed: int = 0,
) -> Explanation:
    """GradientSHAP (Lundberg and Lee 2017) over black and uniform-noise baselines, summed over channels: (B, H, W)."""
    from captum.attr import GradientShap

    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((n_baselines - 1, *images.shape[1:]), generator=g).to(images)
    baselines = torch.cat([torch.zeros_like(images[:1]), noise])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        attr = GradientShap(_forward(model)).attribute(images, baselines=baselines, target=target, n_samples=n_samples)
    finally:
        torch.random.set_rng_state(state)
    return Explanation(maps=attr.sum(1))


def _per_image_surrogate(
    explainer: Any, model: nn.Module, images: Tensor, target: Tensor, n_samples: int, chunk: int, seed: int
) -> Tensor:
    """KernelSHAP / LIME fit one surrogate model per image over the patch features: patch map (B, gh, gw)."""
    grid = patch_grid(model, images)
    mask = feature_mask(model, images)
    fill = _fill(model, images)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        attrs = [
            explainer.attribute(images[i:i + 1], baselines=fill[i:i + 1], target=int(t), feature_mask=mask,
                                n_samples=n_samples, perturbations_per_eval=chunk)
            for i, t in enumerate(target)
        ]
    finally:
        torch.random.set_rng_state(state)
    return _to_patches(torch.cat(attrs), grid) / 3


@explainer("kernel_shap", access="black")
def kernel_shap(
    model: nn.Module, images: Tensor, target: Tensor, n_samples: int = 256, chunk: int = 64,
    seed: int = 0, engine: QueryBackend = "eager",
) -> Explanation:
    """KernelSHAP (Lundberg and Lee 2017) over the model's patches (masked to the model's mean colour): patch map (B, gh, gw)."""
    from captum.attr import KernelShap

    shap = KernelShap(_black_box(model, engine))
    with torch.no_grad():
        return Explanation(maps=_per_image_surrogate(shap, model, images, target, n_samples, chunk, seed))


@explainer("lime", access="black")
def lime(
    model: nn.Module, images: Tensor, target: Tensor, n_samples: int = 256, chunk: int = 64,
    seed: int = 0, alpha: float = 1.0, engine: QueryBackend = "eager",
) -> Explanation:
    """LIME (Ribeiro et al. 2016): ridge surrogate over the model's patches (masked to the model's mean colour): patch map (B, gh, gw)."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    ridge = Lime(_black_box(model, engine), interpretable_model=SkLearnRidge(alpha=alpha))
    with torch.no_grad():
        return Explanation(maps=_per_image_surrogate(ridge, model, images, target, n_samples, chunk, seed))


@explainer("occlusion", access="black")
def occlusion(
    model: nn.Module, images: Tensor, target: Tensor, chunk: int = 64, engine: QueryBackend = "eager"
) -> Explanation:
    """Occlusion (Zeiler and Fergus 2014): output drop when one patch is set to the model's mean colour: patch map (B, gh, gw)."""
    from captum.attr import Occlusion

    grid = patch_grid(model, images)
    window = (images.shape[1], -(-images.shape[-2] // grid[0]), -(-images.shape[-1] // grid[1]))
    with torch.no_grad():
        attr = Occlusion(_black_box(model, engine)).attribute(
            images, sliding_window_shapes=window, strides=window, baselines=_fill(model, images), target=target,
            perturbations_per_eval=chunk,
        )
    return Explanation(maps=_to_patches(attr, grid) / images.shape[1])


def _cam_layer(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
    """Target layer for grad-cam and the reshape transform it needs: a ViT's last norm1 (tokens -> (B, D, gh, gw)),
    the model's own `cam_layer`, a timm CNN's last feature stage, else the last Conv2d."""
    backbone = getattr(model, "backbone", model)
    if getattr(model, "is_vit", False):
        prefix, (gh, gw) = model.num_prefix_tokens, model.patch_grid

        def reshape(tokens: Tensor) -> Tensor:
            return tokens[:, prefix:].reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2)

        return backbone.blocks[-1].norm1, reshape
    layer = getattr(model, "cam_layer", None)
    if isinstance(layer, nn.Module):
        return layer, None
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return backbone.get_submodule(name), None
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"grad-cam needs a target layer, but {type(backbone).__name__} is neither one of this project's ViTs, a "
            "timm CNN with feature_info nor a model with a Conv2d; give the model a `cam_layer` attribute (the module)"
        )
    return convs[-1], None


def _is_vit(model: nn.Module) -> str | None:
    if getattr(model, "is_vit", False):
        return None
    return f"it needs a ViT (attention weights), but the model is a {type(getattr(model, 'backbone', model)).__name__}"


def _has_cam_layer(model: nn.Module) -> str | None:
    try:
        _cam_layer(model)
    except ValueError as err:
        return str(err)
    return None


#: Largest activation map (H x W positions) EigenCAM is run on: 64 x 64 (a 64 MiB SVD matrix per image).
EIGENCAM_MAX_POSITIONS = 4096


def _grad_cam(cam_class: type, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = _cam_layer(model)
    was_training = model.training
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        # frozen models (requires_grad False) still get a graph through the activations from the input
        inputs = images.detach().requires_grad_(True)
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in target])
    model.train(was_training)
    return torch.as_tensor(maps, device=images.device).float()


@explainer("gradcam", access="white", supports=_has_cam_layer)
def gradcam(model: nn.Module, images: Tensor, target: Tensor) -> Explanation:
    """Grad-CAM (Selvaraju et al. 2017) on the last block / stage via grad-cam: pixel map (B, H, W) in [0, 1]."""
    from pytorch_grad_cam import GradCAM

    return Explanation(maps=_grad_cam(GradCAM, model, images, target))


@explainer("eigencam", access="grey", supports=_has_cam_layer)
def eigencam(model: nn.Module, images: Tensor, target: Tensor) -> Explanation:
    """Eigen-CAM (Muhammad and Yeasin 2020): first principal component of the last activations, (B, H, W)."""
    from pytorch_grad_cam import EigenCAM

    layer, reshape = _cam_layer(model)
    shapes: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model(images[:1])
    hook.remove()
    positions = shapes[0][1] if reshape is not None else math.prod(shapes[0][2:])
    if positions > EIGENCAM_MAX_POSITIONS:  # grad-cam's full SVD holds a (positions x positions) matrix per image
        raise ValueError(f"eigencam: the target layer has {positions} spatial positions; grad-cam's SVD would need "
                         f"{positions ** 2 * 4 / 2**30:.0f} GiB per image. Give the model a coarser `cam_layer`")
    with torch.no_grad():
        return Explanation(maps=_grad_cam(EigenCAM, model, images, target))


def rise_masks(n: int, cells: int, size: tuple[int, int], p: float, generator: torch.Generator) -> Tensor:
    """RISE masks (Petsiuk et al. 2018, section 3.2): cells x cells Bernoulli(p) grids, bilinearly upsampled to
    (cells + 1) x the cell size and randomly shifted by up to one cell: (n, H, W) float in [0, 1]."""
    h, w = size
    ch, cw = -(-h // cells), -(-w // cells)
    grid = (torch.rand(n, 1, cells, cells, generator=generator) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear", align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator)
    dx = torch.randint(0, cw, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return up[torch.arange(n)[:, None, None], rows, cols]


@explainer("rise", access="black")
def rise(
    model: nn.Module, images: Tensor, target: Tensor, n_masks: int = 1000, cells: int | None = None,
    p: float = 0.5, chunk: int = 256, seed: int = 0, engine: QueryBackend = "eager",
) -> Explanation:
    """RISE (Petsiuk et al. 2018, eq. 6): sum_i p_target(I * M_i + fill * (1 - M_i)) M_i / (N p), masks shared by the batch: (B, H, W)."""
    cells = cells or max(patch_grid(model, images))
    g = torch.Generator().manual_seed(seed)
    masks = rise_masks(n_masks, cells, images.shape[-2:], p, g).to(images)
    fill = mask_fill(model, images=images)
    forward = _black_box(model, engine)
    b = images.shape[0]
    scores = []
    with torch.no_grad():
        for m in masks.split(max(1, chunk // b)):
            owner = torch.arange(b, device=images.device).repeat_interleave(m.shape[0])
            mutants = apply_mask(images, m.repeat(b, 1, 1), fill, owner)
            probs = forward(mutants).float().softmax(-1).view(b, m.shape[0], -1)
            scores.append(probs.gather(2, target.view(b, 1, 1).expand(b, m.shape[0], 1))[..., 0])
    weights = torch.cat(scores, 1)
    return Explanation(maps=torch.einsum("bn,nhw->bhw", weights, masks.float()) / (n_masks * p))


@explainer("attention_rollout", access="grey", supports=_is_vit)
def attention_rollout(
    model: nn.Module, images: Tensor, target: Tensor, head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> Explanation:
    """Attention rollout (Abnar and Zuidema 2020): product over layers of 0.5 A + 0.5 I (heads fused, rows
    renormalised); the class token's row over the patch tokens (registers dropped): patch map (B, gh, gw)."""
    blocks = model.backbone.blocks
    attentions: list[Tensor] = []
    hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attentions.append(o.detach())) for blk in blocks]
    fused = [blk.attn.fused_attn for blk in blocks]
    for blk in blocks:
        blk.attn.fused_attn = False
    try:
        with torch.no_grad():
            model(images)
    finally:
        for blk, f in zip(blocks, fused):
            blk.attn.fused_attn = f
        for h in hooks:
            h.remove()
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[head_fusion]
    n = attentions[0].shape[-1]
    eye = torch.eye(n, device=images.device)
    rollout = eye.expand(images.shape[0], n, n)
    for att in attentions:
        a = fuse(att.float())
        if discard_ratio > 0:
            k = int(discard_ratio * n * n)
            low = a.flatten(1).topk(k, dim=1, largest=False).indices
            a = a.flatten(1).scatter(1, low, 0.0).view_as(a)
        a = 0.5 * a + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    gh, gw = model.patch_grid
    return Explanation(maps=rollout[:, 0, model.num_prefix_tokens:].reshape(-1, gh, gw))


@explainer("random", access="black")
def random_map(model: nn.Module, images: Tensor, target: Tensor, seed: int = 0) -> Explanation:
    """Uniform random patch map (B, gh, gw): the chance baseline of the metrics tables."""
    g = torch.Generator().manual_seed(seed)
    return Explanation(maps=torch.rand((images.shape[0], *patch_grid(model, images)), generator=g).to(images.device))
