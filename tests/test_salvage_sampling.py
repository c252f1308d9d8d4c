"""Mask samplers: size laws (Shapley uniform, KernelSHAP 1/(k(n-k))) and weighting (Algorithm 3), chi-square tests with fixed seeds."""
import pytest
import torch
from scipy.stats import chisquare

from salvage import guided_masks, kernel_masks, sample_masks, shapley_masks, weighted_subsets
from salvage.sampling import kernel_size_weights

ALPHA = 1e-3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapley_sampler_has_uniform_sizes_and_uniform_subsets():
    n = 6
    masks = shapley_masks(50, 400, n, _gen())
    assert masks.shape == (50, 400, n) and masks.dtype == torch.bool
    sizes = masks.sum(-1).flatten()
    counts = torch.bincount(sizes, minlength=n + 1).numpy()
    assert chisquare(counts).pvalue > ALPHA
    of_size_2 = masks.view(-1, n)[sizes == 2].sum(0).numpy()  # every patch equally likely within a size
    assert chisquare(of_size_2).pvalue > ALPHA


def test_kernel_sampler_follows_the_kernelshap_size_law():
    assert torch.allclose(kernel_size_weights(4), torch.tensor([0, 1, 0.75, 1, 0], dtype=torch.float64) / 2.75)
    n = 8
    sizes = kernel_masks(20, 1000, n, _gen(1)).sum(-1).flatten()
    counts = torch.bincount(sizes, minlength=n + 1)
    assert counts[0] == 0 and counts[n] == 0
    expected = kernel_size_weights(n)[1:n] * sizes.numel()
    assert chisquare(counts[1:n].numpy(), expected.numpy()).pvalue > ALPHA


def test_weighted_subsets_draw_without_replacement_with_the_given_weights():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    one = weighted_subsets(w.float().expand(20000, 4), torch.ones(20000, dtype=torch.long), _gen(2))
    assert (one.sum(-1) == 1).all()
    assert chisquare(one.sum(0).numpy(), (w / w.sum() * 20000).numpy()).pvalue > ALPHA
    two = weighted_subsets(w.float().expand(20000, 4), torch.full((20000,), 2), _gen(3))
    p = w / w.sum()
    pair = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    probs = torch.stack([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pair])
    code = (two.long() * torch.tensor([1, 2, 4, 8])).sum(-1)
    observed = torch.stack([(code == (1 << i) + (1 << j)).sum() for i, j in pair])
    assert chisquare(observed.numpy(), (probs * 20000).numpy()).pvalue > ALPHA
    zero = weighted_subsets(torch.tensor([[0.0, 1.0, 1.0]]).expand(1000, 3), torch.full((1000,), 2), _gen(4))
    assert not zero[:, 0].any()  # a zero weight is drawn only after all positive ones


def test_guided_sampler_halves_follow_phi_norm_and_one_minus_phi_norm():
    phi = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    masks = guided_masks(phi * 5 - 7, 40000, _gen(5))[0]  # min-max normalisation removes scale and shift
    sizes = masks.sum(-1)
    assert chisquare(torch.bincount(sizes, minlength=5)[1:].numpy()).pvalue > ALPHA and (sizes >= 1).all()
    first, second = masks[:20000], masks[20000:]
    for half, weights in ((first, torch.tensor([0, 1, 2, 3.0], dtype=torch.float64)), (second, torch.tensor([3, 2, 1, 0.0], dtype=torch.float64))):
        single = half[half.sum(-1) == 1].sum(0)
        assert single[weights == 0].sum() == 0
        keep = weights > 0
        expected = weights[keep] / weights.sum() * single.sum()
        assert chisquare(single[keep].numpy(), expected.numpy()).pvalue > ALPHA


def test_sample_masks_dispatches_and_rejects_bad_input():
    assert sample_masks("kernel", 2, 3, 5, _gen()).shape == (2, 3, 5)
    assert sample_masks("guided", 2, 4, 5, _gen(), phi=torch.rand(2, 5)).shape == (2, 4, 5)
    with pytest.raises(ValueError, match="needs the current attributions"):
        sample_masks("guided", 2, 4, 5, _gen())
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_masks("rise", 2, 4, 5, _gen())
    with pytest.raises(ValueError, match="must be even"):
        guided_masks(torch.rand(1, 5), 3, _gen())
