"""RCSB bridge maths (rcsb.bridge): I2SB schedule values, marginal, posterior, x0 parametrisation, sampling loop."""
import numpy as np
import pytest
import torch

from rcsb import (
    BridgeSchedule,
    bridge_sample,
    inpainting_loss,
    inpainting_x1,
    make_betas,
    p_posterior,
    predict_x0,
    q_sample,
    sample_steps,
    training_target,
)

T = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sched() -> BridgeSchedule:
    return BridgeSchedule.i2sb(interval=T, beta_max=1.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- schedule


def test_betas_are_mirrored_float64_squares_of_a_linspace():
    betas = make_betas(T, beta_max=1.0)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    half = torch.linspace(1e-4**0.5, (1.0 / T) ** 0.5, T, dtype=torch.float64)[: T // 2] ** 2
    assert torch.equal(betas[: T // 2], half)
    assert torch.equal(betas, betas.flip(0))  # symmetric
    peak = (1e-2 + ((1.0 / T) ** 0.5 - 1e-2) * 499 / 999) ** 2  # linspace value at index 499, squared
    assert betas[0] == pytest.approx(1e-4) and betas.max() == pytest.approx(peak)
    assert torch.equal(make_betas(8, mirrored=False), torch.linspace(1e-2, (1.0 / 8) ** 0.5, 8, dtype=torch.float64) ** 2)


def test_schedule_values_match_i2sb(sched):
    assert sched.std_fwd.dtype == torch.float32 and sched.interval == T
    assert round(sched.std_fwd[0].item(), 4) == 0.0100
    assert round(sched.std_fwd[499].item(), 4) == 0.3514
    assert round(sched.std_fwd[999].item(), 4) == 0.4969
    assert round(sched.std_sb.max().item(), 4) == 0.2487
    # Gaussian product identities, checked in float64 from the betas
    b = make_betas(T).numpy()
    fwd2, bwd2 = np.cumsum(b), np.cumsum(b[::-1])[::-1]
    np.testing.assert_allclose(sched.std_bwd.numpy(), np.sqrt(bwd2), rtol=1e-6)
    np.testing.assert_allclose(sched.mu_x0.numpy(), bwd2 / (fwd2 + bwd2), rtol=1e-6)
    np.testing.assert_allclose(sched.mu_x1.numpy(), fwd2 / (fwd2 + bwd2), rtol=1e-6)
    np.testing.assert_allclose(sched.std_sb.numpy(), np.sqrt(fwd2 * bwd2 / (fwd2 + bwd2)), rtol=1e-6)
    torch.testing.assert_close(sched.mu_x0 + sched.mu_x1, torch.ones(T))


def test_time_input_is_scaled_linspace(sched):
    levels = torch.linspace(1e-4, 1, T) * T
    assert torch.equal(sched.time_levels, levels)
    assert sched.time_input(0).item() == pytest.approx(0.1) and sched.time_input(T - 1).item() == pytest.approx(1000.0)
    assert torch.equal(sched.time_input(7, batch_size=3), levels[7].expand(3))
    assert torch.equal(sched.time_input(torch.tensor([0, 5, 999])), levels[[0, 5, 999]])
    with pytest.raises(ValueError, match="outside the schedule"):
        sched.time_input(T)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="even interval"):
        make_betas(999)
    with pytest.raises(ValueError, match="interval"):
        make_betas(1)
    with pytest.raises(ValueError, match="positive"):
        BridgeSchedule.from_betas([0.1, 0.0, 0.1])


# --------------------------------------------------------------------------- marginal q(x_t | x0, x1)


def test_q_sample_endpoints(sched):
    x0, x1 = torch.randn(2, 3, 8, 8, generator=_gen(0)), torch.randn(2, 3, 8, 8, generator=_gen(1))
    near0 = q_sample(sched, 0, x0, x1, ot_ode=True)
    near1 = q_sample(sched, T - 1, x0, x1, ot_ode=True)
    gap = (x1 - x0).abs()
    assert sched.mu_x1[0] < 5e-4 and sched.mu_x0[T - 1] < 5e-4  # 1e-4 / (sum(betas) + 1e-4)
    assert ((near0 - x0).abs() <= 5e-4 * gap + 1e-6).all()
    assert ((near1 - x1).abs() <= 5e-4 * gap + 1e-6).all()
    # with noise the endpoints stay close too: std_sb[0] = std_sb[T-1] ~ 0.01
    noisy = q_sample(sched, 0, x0, x1, ot_ode=False, generator=_gen(2))
    assert (noisy - x0).std().item() == pytest.approx(sched.std_sb[0].item(), rel=0.2)


def test_q_sample_monte_carlo_mean_and_std(sched):
    n = 200_000
    x0, x1 = torch.full((n,), 0.7), torch.full((n,), -1.2)
    for step in (100, 499, 850):
        xt = q_sample(sched, step, x0, x1, ot_ode=False, generator=_gen(step))
        mean = sched.mu_x0[step] * 0.7 + sched.mu_x1[step] * -1.2
        assert xt.mean().item() == pytest.approx(mean.item(), abs=4 * sched.std_sb[step].item() / n**0.5)
        assert xt.std().item() == pytest.approx(sched.std_sb[step].item(), rel=0.01)
        assert torch.equal(q_sample(sched, step, x0[:4], x1[:4], ot_ode=True), mean.expand(4))


def test_q_sample_per_image_steps(sched):
    x0, x1 = torch.randn(3, 2, 4, 4, generator=_gen(3)), torch.randn(3, 2, 4, 4, generator=_gen(4))
    steps = torch.tensor([0, 400, 999])
    batched = q_sample(sched, steps, x0, x1)
    for i, s in enumerate(steps.tolist()):
        torch.testing.assert_close(batched[i], q_sample(sched, s, x0[i : i + 1], x1[i : i + 1])[0])
    with pytest.raises(ValueError, match="same shape"):
        q_sample(sched, 3, x0, x1[:2])
    with pytest.raises(ValueError, match="integer"):
        q_sample(sched, torch.tensor([0.5, 1.0, 2.0]), x0, x1)


# --------------------------------------------------------------------------- posterior p(x_prev | x_n, x0)


def test_p_posterior_matches_closed_form_by_monte_carlo(sched):
    n_samples, n_prev, n = 200_000, 300, 700
    x_n, x0 = torch.full((n_samples,), 0.4), torch.full((n_samples,), -0.9)
    v_n, v_p = sched.std_fwd[n].double() ** 2, sched.std_fwd[n_prev].double() ** 2
    mean = ((v_n - v_p) / v_n * -0.9 + v_p / v_n * 0.4).item()
    var = (v_p * (v_n - v_p) / v_n).item()
    x_prev = p_posterior(sched, n_prev, n, x_n, x0, ot_ode=False, generator=_gen(5))
    assert x_prev.mean().item() == pytest.approx(mean, abs=4 * (var / n_samples) ** 0.5)
    assert x_prev.var().item() == pytest.approx(var, rel=0.015)
    ode = p_posterior(sched, n_prev, n, x_n[:8], x0[:8], ot_ode=True)
    torch.testing.assert_close(ode, torch.full((8,), mean))
    assert torch.equal(ode, p_posterior(sched, n_prev, n, x_n[:8], x0[:8], ot_ode=True))  # deterministic


def test_p_posterior_last_step_is_deterministic_closed_form(sched):
    x_n, x0 = torch.randn(2, 3, 4, 4, generator=_gen(6)), torch.randn(2, 3, 4, 4, generator=_gen(7))
    a = p_posterior(sched, 0, 500, x_n, x0, ot_ode=False, generator=_gen(8))
    b = p_posterior(sched, 0, 500, x_n, x0, ot_ode=False, generator=_gen(9))
    assert torch.equal(a, b)  # no noise at n_prev = 0, whatever the generator
    w = (sched.std_fwd[0].double() ** 2 / sched.std_fwd[500].double() ** 2).item()  # std_fwd[0] = 0.01 > 0
    torch.testing.assert_close(a, (1 - w) * x0 + w * x_n)
    torch.testing.assert_close(p_posterior(sched, 0, 500, x0, x0), x0)  # x_n = x0 is a fixed point


def test_p_posterior_rejects_bad_steps(sched):
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="n_prev < n"):
        p_posterior(sched, 5, 5, x, x)
    with pytest.raises(ValueError, match="outside the schedule"):
        p_posterior(sched, 0, T, x, x)
    with pytest.raises(ValueError, match="outside the schedule"):
        p_posterior(sched, -1, 3, x, x)


# --------------------------------------------------------------------------- training parametrisation


def test_training_target_and_predict_x0_are_inverse(sched):
    x0, x1 = torch.randn(4, 3, 8, 8, generator=_gen(10)), torch.randn(4, 3, 8, 8, generator=_gen(11))
    step = torch.tensor([0, 10, 500, 999])
    xt = q_sample(sched, step, x0, x1, ot_ode=False, generator=_gen(12))
    label = training_target(sched, step, x0, xt)
    torch.testing.assert_close(label * sched.std_fwd[step].view(-1, 1, 1, 1), xt - x0)
    torch.testing.assert_close(predict_x0(sched, xt, step, label), x0, atol=1e-5, rtol=0)
    for s in (0, 250, 999):  # int steps too
        xs = q_sample(sched, s, x0, x1)
        torch.testing.assert_close(predict_x0(sched, xs, s, training_target(sched, s, x0, xs)), x0, atol=1e-5, rtol=0)
    big = predict_x0(sched, xt, step, -100 * torch.ones_like(xt), clip_denoise=True)
    assert big.max() <= 1 and big.min() >= -1


def test_inpainting_x1_and_loss():
    x0 = torch.randn(2, 3, 16, 16, generator=_gen(13))
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    x1 = inpainting_x1(x0, mask, _gen(14))
    outside = (mask == 0).expand_as(x0)
    assert torch.equal(x1[outside], x0[outside])  # bit-identical outside the hole
    assert not torch.isclose(x1[~outside], x0[~outside]).any()
    assert x1[~outside].std().item() == pytest.approx(1.0, rel=0.15)
    assert torch.equal(inpainting_x1(x0, mask.bool(), _gen(14)), x1)  # bool masks, same noise
    with pytest.raises(ValueError, match="binary"):
        inpainting_x1(x0, mask * 0.5)
    with pytest.raises(ValueError, match="broadcast"):
        inpainting_x1(x0, mask[:, :, :8])
    pred, label = torch.randn_like(x0), torch.randn_like(x0)
    loss = inpainting_loss(pred, label, mask)
    assert loss.item() == pytest.approx((((pred - label) * mask) ** 2).mean().item())
    assert inpainting_loss(pred, pred + 5 * (1 - mask), mask).item() == 0.0  # errors outside the hole are ignored


# --------------------------------------------------------------------------- step spacing and sampling loop


def test_sample_steps_spacing_and_edge_cases():
    assert sample_steps(1000, 2) == [0, 500, 999]
    assert sample_steps(1000) == list(range(1000))
    assert sample_steps(2, 1) == [0, 1]
    assert sample_steps(10, 4) == [0, 2, 4, 7, 9]  # round-half-even at 4.5, as util.space_indices
    for start, nfe in ((1000, 1), (1000, 7), (1000, 999), (300, 20), (17, 16)):
        steps = sample_steps(start, nfe)
        assert len(steps) == nfe + 1 and steps[0] == 0 and steps[-1] == start - 1
        assert all(b > a for a, b in zip(steps, steps[1:]))
    for start, nfe in ((1000, 0), (1000, 1000), (1, 1), (0, None), (1000, -3), (10.0, 2), (1000, 2.5), (True, 1)):
        with pytest.raises(ValueError):
            sample_steps(start, nfe)


def test_bridge_sample_with_oracle_telescopes_to_x0(sched):
    x0 = torch.randn(2, 3, 8, 8, generator=_gen(15))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    x1 = inpainting_x1(x0, mask, _gen(16))
    calls = []

    def oracle(x_t, step):
        calls.append(step)
        return x0

    out = bridge_sample(sched, oracle, x1, sample_steps(T, 10))
    assert calls == sample_steps(T, 10)[:0:-1]  # 999 down to the first non-zero step
    # each OT-ODE step keeps a weight v_prev / v_n on x_t; the weights telescope to v_0 / v_start
    w = (sched.std_fwd[0].double() ** 2 / sched.std_fwd[T - 1].double() ** 2).item()
    torch.testing.assert_close(out, x0 + w * (x1 - x0), atol=1e-6, rtol=1e-5)
    # with the hole mask re-imposed, the known pixels come out bit-identical and the hole equals the above
    masked = bridge_sample(sched, lambda x, s: x0, x1, sample_steps(T, 10), mask=mask)
    outside = (mask == 0).expand_as(x0)
    assert torch.equal(masked[outside], x0[outside])
    torch.testing.assert_close(masked[~outside], out[~outside])


def test_bridge_sample_hook_and_noise(sched):
    x0 = torch.randn(1, 3, 4, 4, generator=_gen(17))
    x1 = torch.randn(1, 3, 4, 4, generator=_gen(18))
    steps = [0, 100, 600, 999]
    seen = []

    def hook(x_t, step, prev, x0_hat):
        seen.append((step, prev))
        if step == 100:  # override the last transition: jump straight to x0_hat
            return x0_hat
        return None

    out = bridge_sample(sched, lambda x, s: x0, x1, steps, step_hook=hook)
    assert seen == [(999, 600), (600, 100), (100, 0)]
    assert torch.equal(out, x0)
    a = bridge_sample(sched, lambda x, s: 0.5 * x, x1, steps, ot_ode=False, generator=_gen(19))
    b = bridge_sample(sched, lambda x, s: 0.5 * x, x1, steps, ot_ode=False, generator=_gen(19))
    c = bridge_sample(sched, lambda x, s: 0.5 * x, x1, steps, ot_ode=False, generator=_gen(20))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for bad in ([5, 999], [0], [0, 500, 500], [0, 1000], [0, 700, 300]):
        with pytest.raises(ValueError):
            bridge_sample(sched, lambda x, s: x, x1, bad)


def test_schedule_to_and_dtypes(sched):
    moved = sched.to("cpu")
    assert torch.equal(moved.std_fwd, sched.std_fwd)
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert q_sample(sched, 10, x0, x0).dtype == torch.float64
    assert p_posterior(sched, 5, 10, x0.half(), x0.half()).dtype == torch.float16
