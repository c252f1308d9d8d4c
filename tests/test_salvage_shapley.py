"""Shapley distributions, JS loss, ViT-Shapley normalisation, exact Shapley values, and recovery of a known game's values."""
import math

import pytest
import torch

from salvage import (
    coalition_logits,
    efficient_normalisation,
    exact_shapley_values,
    js_divergence,
    js_loss,
    shapley_distribution,
    shapley_masks,
    vit_shapley_loss,
)
from salvage.shapley import all_subsets


def test_js_loss_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    phi_plus, phi_minus = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    masks = torch.rand(2, 4, 5, generator=g) < 0.5
    values = torch.randn(2, 4, 3, generator=g).softmax(-1)
    expected = 0.0
    for b in range(2):
        for m in range(4):
            z = [sum(phi_plus[b, c, i] if masks[b, m, i] else phi_minus[b, c, i] for i in range(5)) for c in range(3)]
            u = [math.exp(z[c] / 2.0) / sum(math.exp(x / 2.0) for x in z) for c in range(3)]
            v = values[b, m].tolist()
            mid = [(u[c] + v[c]) / 2 for c in range(3)]
            expected += 0.5 * sum(u[c] * math.log(u[c] / mid[c]) + v[c] * math.log(v[c] / mid[c]) for c in range(3))
    loss = js_loss(phi_plus, phi_minus, masks, values, temperature=2.0)
    assert loss.item() == pytest.approx(expected / 8, rel=1e-5)
    assert js_divergence(values, values).abs().max() < 1e-7
    assert js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(2))


def test_binary_distribution_is_a_sigmoid_and_coalitions_sum_the_right_sets():
    p = shapley_distribution(torch.tensor([[0.0], [2.0]]), binary=True)
    assert torch.allclose(p[:, 1], torch.sigmoid(torch.tensor([0.0, 2.0]))) and torch.allclose(p.sum(-1), torch.ones(2))
    plus, minus = torch.tensor([[[1.0, 2.0, 4.0]]]), torch.tensor([[[10.0, 20.0, 40.0]]])
    logits = coalition_logits(plus, minus, torch.tensor([[[True, False, True]]]))
    assert logits.item() == 1.0 + 20.0 + 4.0
    with pytest.raises(ValueError, match="temperature"):
        shapley_distribution(logits, temperature=0.0)


def test_vit_shapley_normalisation_is_efficient_and_loss_is_n_times_mse():
    phi = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    grand, null = torch.tensor([[0.9]]), torch.tensor([[0.1]])
    norm = efficient_normalisation(phi, grand, null)
    assert torch.allclose(norm, phi + (0.8 - 12.0) / 4) and norm.sum().item() == pytest.approx(0.8)
    masks = torch.tensor([[[True, True, False, False]]])
    pred = 0.1 + norm[0, 0, 0] + norm[0, 0, 1]
    loss = vit_shapley_loss(phi, masks, torch.tensor([[[0.5]]]), grand, null)
    assert loss.item() == pytest.approx(4 * (pred.item() - 0.5) ** 2, rel=1e-5)


def test_exact_shapley_values_on_hand_made_games():
    subsets = all_subsets(3).float()
    unanimity = subsets[:, 0] * subsets[:, 1]  # v(S) = 1 iff {0, 1} in S: 1/2 each
    assert torch.allclose(exact_shapley_values(unanimity), torch.tensor([0.5, 0.5, 0.0]))
    majority = (subsets.sum(-1) >= 2).float()  # symmetric: 1/3 each
    assert torch.allclose(exact_shapley_values(majority), torch.full((3,), 1 / 3))


N_PATCHES, N_CLASSES = 8, 4


def _fit_free_phi(logit_game, steps=300, seed=0):
    """Train phi+ and phi- as free parameters with the JS loss on Shapley-sampled masks of a game of 8 patches."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.zeros(2, 1, N_CLASSES, N_PATCHES, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead
    try:
        for _ in range(steps):
            masks = shapley_masks(1, 128, N_PATCHES, g)
            values = logit_game(masks[0].float()).softmax(-1)[None]
            loss = js_loss(phi[0], phi[1], masks, values)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return (phi[0, 0] - phi[1, 0]).detach().T  # (n, C)


def _centre(x):
    return x - x.mean(-1, keepdim=True)


def test_js_training_recovers_an_additive_logit_game():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(N_PATCHES, N_CLASSES, generator=g), torch.randn(N_CLASSES, generator=g)
    phi = _fit_free_phi(lambda s: b + s @ a)
    assert (_centre(phi) - _centre(a)).abs().max() < 0.05


def test_non_additive_game_distance_to_exact_logit_shapley_values(capsys):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(N_PATCHES, N_CLASSES, generator=g), torch.randn(N_CLASSES, generator=g)
    pair = torch.randn(N_CLASSES, generator=g) * 2

    def game(s):
        return b + s @ a + (s[:, 0] * s[:, 1])[:, None] * pair

    exact = exact_shapley_values(game(all_subsets(N_PATCHES).float()))
    assert torch.allclose(exact[2:], a[2:], atol=1e-5) and torch.allclose(exact[:2], a[:2] + pair / 2, atol=1e-5)
    phi = _fit_free_phi(game)
    gap = (_centre(phi) - _centre(exact)).abs()
    with capsys.disabled():
        print(f"\nnon-additive game: max |phi - exact| after centring = {gap.max():.3f} "
              f"(interacting patches {gap[:2].max():.3f}, others {gap[2:].max():.3f})")
    assert gap[2:].max() < 0.3 and gap.max() < 0.5


def test_exhaustive_shapley_values_equal_the_permutation_formula_and_are_efficient():
    import itertools

    g = torch.Generator().manual_seed(0)
    values = torch.rand(16, 2, generator=g, dtype=torch.float64)  # a random 4-player game with two outputs
    brute = torch.zeros(4, 2, dtype=torch.float64)
    orders = list(itertools.permutations(range(4)))
    for order in orders:  # Shapley value = mean marginal contribution over all orderings
        coalition = 0
        for player in order:
            brute[player] += values[coalition | 1 << player] - values[coalition]
            coalition |= 1 << player
    brute /= len(orders)
    exact = exact_shapley_values(values)
    assert torch.allclose(exact, brute, atol=1e-12)
    assert torch.allclose(exact.sum(0), values[-1] - values[0], atol=1e-12)  # efficiency
    weights = torch.linspace(-1, 1, 16, dtype=torch.float64)  # 16 players (2^16 coalitions): additive game
    additive = (all_subsets(16).double() * weights).sum(-1) + 0.3
    assert torch.allclose(exact_shapley_values(additive), weights, atol=1e-9)
