"""Algorithm 1 and the property gradient on hand-made sequences, against scipy, and finite differences vs jvp."""
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from interventions import (
    AlphaBlend,
    Brightness,
    autograd_derivative,
    centred_p_value,
    finite_difference_gradient,
    gradual_intervention_test,
    intervention_grid,
    permutation_test,
    prediction_flips,
    property_gradient,
)


def test_constant_sequence_is_never_significant():
    curves = torch.full((3, 100), 0.3)
    res = permutation_test(curves, num_permutations=200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.statistic, torch.zeros(3))
    assert torch.equal(res.p_value, torch.ones(3))
    poster = permutation_test(curves, num_permutations=200, generator=torch.Generator().manual_seed(0), plus_one=False)
    assert torch.equal(poster.p_value, torch.ones(3))


def test_step_statistic_and_p_value():
    x = intervention_grid(100)
    step = (torch.arange(100) >= 50).float()[None]
    res = permutation_test(step, x, 1000, torch.Generator().manual_seed(1))
    # central differences at indices 49 and 50 are 1 / (2h) = 49.5 per unit x, all others 0: S = 99 / 100
    assert res.statistic.item() == pytest.approx(0.99, abs=1e-5)
    assert res.p_value.item() == pytest.approx(1 / 1001)  # no shuffle is as extreme; the p-value is never 0
    poster = permutation_test(step, x, 1000, torch.Generator().manual_seed(1), plus_one=False)
    assert poster.p_value.item() == 0.0  # the poster's count b / K


def test_finite_differences_match_hand_computation():
    x = torch.tensor([0.0, 0.5, 1.0])
    curve = torch.tensor([0.0, 0.2, 1.0])
    # one-sided ends: 0.4, 1.6; centre: (1.0 - 0.0) / 1.0 = 1.0
    assert torch.allclose(finite_difference_gradient(curve, x), torch.tensor([0.4, 1.0, 1.6]))
    assert property_gradient(curve, x).item() == pytest.approx(1.0)


def test_centred_two_sided_p_value_by_hand():
    null = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]])  # mean 4, deviations 3, 2, 1, 0, 6
    # |0 - 4| = 4: only 10 is as far (b = 1); deviation 2: 1, 2 and 10 are as far (b = 3)
    assert centred_p_value(torch.tensor([0.0]), null).item() == pytest.approx(2 / 6)
    assert centred_p_value(torch.tensor([6.0]), null).item() == pytest.approx(4 / 6)
    assert centred_p_value(torch.tensor([0.0]), null, plus_one=False).item() == pytest.approx(1 / 5)
    assert centred_p_value(torch.tensor([6.0]), null, plus_one=False).item() == pytest.approx(3 / 5)


def test_noise_p_values_are_roughly_uniform():
    g = torch.Generator().manual_seed(2)
    noise = torch.rand(200, 100, generator=g)
    p = permutation_test(noise, num_permutations=1000, generator=g).p_value
    assert 0.02 <= (p < 0.05).float().mean().item() <= 0.09
    assert 0.35 <= (p < 0.5).float().mean().item() <= 0.65


def _ks_distance(a, b):
    a, b = np.round(a, 9), np.round(b, 9)  # ties between equal orders must not split on last-bit rounding
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(cdf_a - cdf_b).max()


def _scipy_stat(h):
    return lambda a, axis: np.abs(np.gradient(a, h, axis=axis)).mean(axis=axis)


def test_null_distribution_and_p_match_scipy_exact():
    rng = np.random.default_rng(0)
    seq = np.array([0.1, 0.15, 0.3, 0.32, 0.8, 0.82]) + 0.05 * rng.standard_normal(6)
    h = 1 / 5
    ref = stats.permutation_test((seq,), _scipy_stat(h), permutation_type="pairings", n_resamples=10_000,
                                 vectorized=True)
    assert ref.null_distribution.shape == (720,)  # all 6! orders: exact null
    g = torch.Generator().manual_seed(3)
    ours = permutation_test(torch.tensor(seq)[None], num_permutations=20_000, generator=g)
    assert ours.statistic.item() == pytest.approx(ref.statistic)
    assert _ks_distance(ours.null[0].numpy(), ref.null_distribution) < 0.015  # DKW: 99% band for 20k draws
    exact_null = torch.tensor(ref.null_distribution)[None]  # every order once, the observed one included: b / K
    exact_p = centred_p_value(torch.tensor([ref.statistic]), exact_null, plus_one=False).item()
    assert ours.p_value.item() == pytest.approx(exact_p, abs=0.01)
    assert exact_p < 0.2  # a rising sequence: far smoother than most of its shuffles


def test_null_distribution_matches_scipy_monte_carlo():
    g = torch.Generator().manual_seed(4)
    seq = torch.sigmoid(8 * (intervention_grid(100) - 0.5)) + 0.2 * torch.rand(100, generator=g)
    ref = stats.permutation_test((seq.double().numpy(),), _scipy_stat(1 / 99), permutation_type="pairings",
                                 n_resamples=4000, vectorized=True, rng=np.random.default_rng(5))
    ours = permutation_test(seq.double()[None], num_permutations=4000, generator=g)
    qs = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    ref_null = torch.tensor(ref.null_distribution)
    assert torch.allclose(torch.quantile(ours.null[0], qs), torch.quantile(ref_null, qs), atol=0.1 * ref_null.std())
    mc_p = centred_p_value(torch.tensor([ref.statistic]), ref_null[None]).item()
    assert ours.p_value.item() == pytest.approx(mc_p, abs=0.02)


def test_p_value_is_scipys_monte_carlo_p_value_and_never_zero():
    """scipy.stats.permutation_test with our centred statistic |S - m| (m fixed) and alternative="greater" counts the
    observed order as one of the K + 1: p = (1 + b) / (1 + K), as ours by default."""
    x = intervention_grid(50)
    g = torch.Generator().manual_seed(6)
    cases = [(x >= 0.5).double(), torch.rand(50, generator=g).double()]  # a step; noise
    for seq in cases:
        ours = permutation_test(seq[None], x.double(), 2000, g)
        centre = ours.null.mean().item()
        stat = lambda a, axis: np.abs(np.abs(np.gradient(a, x.double().numpy(), axis=axis)).mean(axis=axis) - centre)
        ref = stats.permutation_test((seq.numpy(),), stat, permutation_type="pairings", n_resamples=2000,
                                     alternative="greater", vectorized=True, rng=np.random.default_rng(7))
        assert ours.p_value.item() > 0
        assert ours.p_value.item() == pytest.approx(ref.pvalue, abs=0.03)
    assert 0.05 < ours.p_value.item() < 0.95  # noise: a middling p-value, so the counts are compared, not only 0
    step = permutation_test(cases[0][None], x.double(), 2000, g)
    assert step.p_value.item() == pytest.approx(1 / 2001)  # scipy's smallest Monte Carlo p-value too


def test_prediction_flips():
    labels = torch.tensor([[0, 0, 1, 1, 0], [2, 2, 2, 2, 2], [1, 0, 1, 0, 1]])
    count, any_flip = prediction_flips(labels)
    assert count.tolist() == [2, 0, 4]
    assert any_flip.tolist() == [True, False, True]


class _Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3 * 6 * 6, 8, generator=g) * 0.3)
        self.w2 = nn.Parameter(torch.randn(8, 3, generator=g))

    def forward(self, images):
        return torch.tanh(images.flatten(1) @ self.w1) @ self.w2


@pytest.mark.parametrize("kind", ["blend", "brightness"])
def test_finite_differences_agree_with_jvp(kind):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 6, 6, generator=g)
    mask = torch.rand(4, 1, 6, 6, generator=g) > 0.4
    edit = AlphaBlend(mask, (1.0, 0.0, 1.0)) if kind == "blend" else Brightness(mask, 0.2)
    model = _Smooth()
    res = gradual_intervention_test(model, images, edit, num_permutations=50, generator=g, autograd=True)
    assert res.gradient.min() > 0.05  # the effect is not trivially small
    assert torch.allclose(res.gradient, res.gradient_autograd, atol=1e-3)
    exact = autograd_derivative(model, images, edit, res.x, res.target)
    fd = finite_difference_gradient(res.curve, res.x)
    assert torch.allclose(fd[:, 1:-1], exact[:, 1:-1], atol=1e-3)  # central differences are O(h^2)
