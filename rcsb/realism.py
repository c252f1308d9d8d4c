"""Realism of counterfactuals (RCSB section 4 metrics): FID and LPIPS through torchmetrics, and an offline FID.

The paper's FID uses InceptionV3 features and its LPIPS a pretrained AlexNet/VGG/SqueezeNet; both need downloaded
weights (a local Inception file can be given). Offline, :class:`ClassifierFeatures` gives a Frechet distance in the
pre-logit feature space of a classifier the project trained on the same data; it ranks methods on that data but is
not comparable to any published FID.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision import models as tv_models

from models.weights import cached_download

#: torchvision's weights of LPIPS's backbones, by torchmetrics' net_type.
_LPIPS_BACKBONES = {"squeeze": tv_models.SqueezeNet1_1_Weights, "alex": tv_models.AlexNet_Weights,
                    "vgg": tv_models.VGG16_Weights}


class RealismUnavailable(RuntimeError):
    """A realism metric whose pretrained weights cannot be had here; the message says why and what to give."""


class ClassifierFeatures(nn.Module):
    """Pre-logit features (the class token after the final norm) of a project classifier, for a feature-space FID."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        backbone = getattr(classifier, "backbone", None)
        if backbone is None or not hasattr(backbone, "forward_head"):
            raise TypeError("ClassifierFeatures needs a MaskableClassifier around a timm backbone")
        self.classifier = classifier.eval()
        self.num_features = int(backbone.num_features)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        backbone = self.classifier.backbone
        x = (images.float() - self.classifier.mean) / self.classifier.std
        return backbone.forward_head(backbone.forward_features(x), pre_logits=True).double()


def frechet_distance(features: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 256) -> float:
    """FID (torchmetrics) between images `real` and `fake` (N, 3, H, W) in [0, 1] in the space of `features`."""
    device = next(iter([*features.parameters(), *features.buffers()]), torch.empty(0)).device
    fid = FrechetInceptionDistance(feature=features, normalize=True).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            fid.update(chunk.to(device), real=is_real)
    return float(fid.compute())


def inception_fid(real: Tensor, fake: Tensor, weights: Optional[str] = None) -> float:
    """The standard FID (InceptionV3 pool features, torch-fidelity's weights or the local file `weights`)."""
    try:
        fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights)
    except Exception as err:
        raise RealismUnavailable(
            f"Inception FID unavailable ({type(err).__name__}: {str(err).splitlines()[0][:160]}); pre-fetch "
            "torch-fidelity's pt_inception-2015-12-05 weights and pass their path"
        ) from None
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(64):
            fid.update(chunk, real=is_real)
    return float(fid.compute())


def lpips_distance(a: Tensor, b: Tensor, net: str = "squeeze") -> Tensor:
    """Per-image LPIPS (torchmetrics; `net` weights from torchvision) between (N, 3, H, W) images in [0, 1]."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        cached_download(f"LPIPS {net}", _LPIPS_BACKBONES[net].DEFAULT.url)
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True, reduction="none")
    except Exception as err:
        raise RealismUnavailable(
            f"LPIPS unavailable: the pretrained {net} backbone could not be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); pre-fetch it with "
            f"python -c \"import torchvision; torchvision.models.{'squeezenet1_1' if net == 'squeeze' else net}"
            f"(weights='DEFAULT')\""
        ) from None
    with torch.no_grad():
        return metric(a.float(), b.float()).flatten()
