"""RCSB realism: the feature-space FID against the closed form, classifier features, clear refusals without weights."""
import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from rcsb.realism import ClassifierFeatures, RealismUnavailable, frechet_distance, inception_fid, lpips_distance


class MeanColour(nn.Module):
    num_features = 3

    def forward(self, images):
        return images.float().mean((2, 3)).double()


def test_feature_fid_equals_the_closed_form():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 8, 8, generator=g)
    fake = (torch.rand(40, 3, 8, 8, generator=g) * 0.6 + 0.2).clamp(0, 1)
    a, b = real.mean((2, 3)).double().numpy(), fake.mean((2, 3)).double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(MeanColour(), real, fake, batch_size=7) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert frechet_distance(MeanColour(), real, real) == pytest.approx(0.0, abs=1e-6)


def test_classifier_features_are_the_pre_logit_token(tiny_classifier):
    features = ClassifierFeatures(tiny_classifier.model)
    images = torch.rand(3, 3, 32, 32)
    out = features(images)
    assert out.shape == (3, features.num_features)
    head = tiny_classifier.model.backbone.head
    assert torch.allclose(head(out.float()), tiny_classifier.model(images), atol=1e-5)
    with pytest.raises(TypeError, match="MaskableClassifier"):
        ClassifierFeatures(nn.Linear(2, 2))


def test_metrics_without_their_weights_are_refused_with_what_to_fetch(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models, "squeezenet1_1", offline)
    with pytest.raises(RealismUnavailable, match="LPIPS unavailable.*pre-fetch"):
        lpips_distance(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(RealismUnavailable, match="Inception FID unavailable.*pass their path"):
        inception_fid(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), weights=None)
