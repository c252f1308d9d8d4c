"""RCSB sampler (rcsb.guidance): exact region constraint, ADAM stabilisation, adaptive normalisation, ablation switches."""
import pytest
import torch
from torch import nn

from rcsb import CLF_INPUTS, AdamStabilizer, BridgeSchedule, adaptive_normalise, adm_tiny, classifier_input, rcsb_sample
from rcsb import sample_steps

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ).eval()


def random_bridge_net() -> nn.Module:
    """A tiny ADM whose zero-initialised output layers are randomised (else eps = 0 and x0_hat = x_t)."""
    torch.manual_seed(0)
    net = adm_tiny().eval()
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(2)
    images = torch.rand(2, 3, SIZE, SIZE)
    region = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)
    region[0, :, 8:20, 10:24] = True
    region[1, :, 0:12, 0:32] = True
    return random_bridge_net(), BridgeSchedule.i2sb(), tiny_classifier(), images, region


def _sample(setup, **kw):
    net, sched, clf, images, region = setup
    opts = dict(nfe=3, start=300, generator=torch.Generator().manual_seed(0))
    opts.update(kw)
    return rcsb_sample(net, sched, clf, images, region, torch.tensor([1, 2]), **opts)


def test_outside_the_region_is_bit_identical_and_inside_changes(setup):
    _, _, _, images, region = setup
    with torch.no_grad():  # the caller may be in no_grad: the sampler turns gradients on itself
        out = _sample(setup)
    assert out.shape == images.shape and not out.requires_grad
    outside = ~region.expand_as(images)
    assert torch.equal(out[outside], images[outside])
    assert (out[~outside] - images[~outside]).abs().mean() > 1e-3
    assert out.min() >= 0 and out.max() <= 1


def test_no_truncation_and_raw_options_keep_the_outside_too(setup):
    _, _, _, images, region = setup
    out = _sample(setup, start=1000, nfe=2, adam=False, normalise=False, scale=50.0)
    outside = ~region.expand_as(images)
    assert torch.equal(out[outside], images[outside])


def test_frozen_models_get_no_parameter_gradients(setup):
    net, _, clf, _, _ = setup
    _sample(setup)
    assert all(p.grad is None for p in (*net.parameters(), *clf.parameters()))


@pytest.mark.parametrize("switch", [dict(tweedie=False), dict(adam=False), dict(normalise=False), dict(start=500),
                                    dict(start=1000, nfe=3), dict(scale=0.0)])
def test_every_ablation_switch_changes_the_output(setup, switch):
    base = _sample(setup)
    other = _sample(setup, **switch)
    assert not torch.allclose(base, other, atol=1e-6)


def test_guidance_raises_the_target_probability(setup):
    _, _, clf, images, _ = setup
    target = torch.tensor([1, 2])
    rows = torch.arange(2)
    with torch.no_grad():
        unguided = torch.softmax(clf(_sample(setup, scale=0.0)), 1)[rows, target]
        guided = torch.softmax(clf(_sample(setup, adam=False, normalise=False, scale=200.0)), 1)[rows, target]
    assert bool((guided > unguided).all())


def test_sampler_is_deterministic_given_the_generator(setup):
    assert torch.equal(_sample(setup), _sample(setup))


def test_steps_walk_from_start_to_zero_and_updates_are_normalised_by_the_first_norm(setup):
    seen = []
    _sample(setup, nfe=3, start=300, adam=False,
            on_step=lambda step, prev, x_t, x0, g, u: seen.append((step, prev, g.clone(), u.clone())))
    steps = sample_steps(300, 3)
    assert [(s, p) for s, p, _, _ in seen] == list(zip(reversed(steps[1:]), reversed(steps[:-1])))
    first = seen[0][2].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for _, _, g, u in seen:  # without ADAM the update is the raw gradient over the FIRST gradient's norm, per image
        torch.testing.assert_close(u, g / first)
    assert torch.allclose(seen[0][3].flatten(1).norm(dim=1), torch.ones(2))


def test_input_errors(setup):
    net, sched, clf, images, region = setup
    with pytest.raises(ValueError, match="start"):
        rcsb_sample(net, sched, clf, images, region, 1, start=1001)
    with pytest.raises(ValueError, match="nfe"):
        rcsb_sample(net, sched, clf, images, region, 1, nfe=300, start=300)
    with pytest.raises(ValueError, match="region"):
        rcsb_sample(net, sched, clf, images, region[:, :, :16], 1, nfe=2, start=300)


# --------------------------------------------------------------------------- ADAM and normalisation


def test_adam_matches_the_closed_form_and_resets():
    b1, b2, eps = 0.9, 0.999, 1e-8
    grads = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]]), torch.tensor([[-1.0, 4.0]])]
    adam = AdamStabilizer(b1, b2, eps)
    for k, _ in enumerate(grads, start=1):
        out = adam.step(grads[k - 1])
        m = sum((1 - b1) * b1 ** (k - j) * grads[j - 1] for j in range(1, k + 1))
        v = sum((1 - b2) * b2 ** (k - j) * grads[j - 1] ** 2 for j in range(1, k + 1))
        expected = (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)
        torch.testing.assert_close(out, expected)
    # first step of bias-corrected ADAM is g / (|g| + eps), i.e. about sign(g)
    adam.reset()
    assert adam.steps == 0 and adam.m is None
    torch.testing.assert_close(adam.step(grads[1]), grads[1] / (grads[1].abs() + eps))
    with pytest.raises(ValueError, match="reset"):
        adam.step(torch.ones(2, 2))


def test_adam_state_is_per_image():
    g = torch.randn(3, 2, 4, 4)
    together = AdamStabilizer()
    alone = [AdamStabilizer() for _ in range(3)]
    for scale in (1.0, -0.5, 2.0):
        out = together.step(g * scale)
        for i in range(3):
            torch.testing.assert_close(out[i:i + 1], alone[i].step(g[i:i + 1] * scale))


def test_adaptive_normalise_uses_the_first_update_norm_per_image():
    first = torch.zeros(2, 3, 2, 2)
    first[0, 0, 0, 0] = 3.0
    first[0, 1, 0, 0] = 4.0  # norm 5
    first[1] = 0.5  # norm 0.5 * sqrt(12)
    out, norm = adaptive_normalise(first)
    torch.testing.assert_close(norm, torch.tensor([5.0, 0.5 * 12**0.5]))
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.ones(2))
    later = torch.randn(2, 3, 2, 2)
    out2, norm2 = adaptive_normalise(later, norm)
    assert norm2 is norm
    torch.testing.assert_close(out2, later / norm.view(2, 1, 1, 1))
    zero, znorm = adaptive_normalise(torch.zeros(1, 3, 2, 2))  # a vanished first update is not divided by zero
    assert torch.equal(znorm, torch.ones(1)) and torch.isfinite(zero).all()


def test_the_unguided_control_never_calls_the_classifier_and_equals_a_vanishing_scale(setup):
    net, sched, clf, images, region = setup

    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("the s = 0 control must not query the classifier")

    opts = dict(nfe=3, start=300, adam=False, normalise=False)
    control = rcsb_sample(net, sched, Refuses(), images, region, 1, scale=0.0,
                          generator=torch.Generator().manual_seed(0), **opts)
    tiny = rcsb_sample(net, sched, clf, images, region, 1, scale=1e-12, generator=torch.Generator().manual_seed(0),
                       **opts)
    assert torch.allclose(control, tiny, atol=1e-6)


# --------------------------------------------------------------------------- the classifier's view of x0_hat


def test_classifier_input_affine_and_per_image_minmax():
    x = torch.stack([torch.linspace(-0.5, 0.3, 12).view(3, 2, 2), torch.linspace(-2.0, 1.5, 12).view(3, 2, 2)])
    torch.testing.assert_close(classifier_input(x, "affine"), (x + 1) / 2)
    stretched = classifier_input(x, "minmax")
    for i in range(2):  # each image on its own: its min goes to 0 and its max to 1
        lo, hi = float(x[i].min()), float(x[i].max())
        torch.testing.assert_close(stretched[i], (x[i] - lo) / (hi - lo))
    assert torch.equal(classifier_input(torch.full((1, 3, 2, 2), 0.4), "minmax"), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="clf_input must be one of affine, minmax"):
        classifier_input(x, "sigmoid")


def test_clf_input_changes_what_the_classifier_sees_and_is_checked(setup):
    seen = {}

    class Recorder(nn.Module):
        def __init__(self, clf, key):
            super().__init__()
            self.clf, self.key = clf, key

        def forward(self, x):
            seen.setdefault(self.key, x.detach().clone())
            return self.clf(x)

    net, sched, clf, images, region = setup
    outs = {}
    for mode in CLF_INPUTS:
        outs[mode] = rcsb_sample(net, sched, Recorder(clf, mode), images, region, 1, nfe=2, start=300, clf_input=mode,
                                 generator=torch.Generator().manual_seed(0))
    flat = seen["minmax"].flatten(1)
    torch.testing.assert_close(flat.amin(1), torch.zeros(2))
    torch.testing.assert_close(flat.amax(1), torch.ones(2))
    assert not torch.allclose(seen["affine"], seen["minmax"])
    assert not torch.allclose(outs["affine"], outs["minmax"], atol=1e-6)
    with pytest.raises(ValueError, match="clf_input"):
        rcsb_sample(net, sched, clf, images, region, 1, nfe=2, start=300, clf_input="raw")
