"""The closed-form oracles against independent computations: scipy densities, Monte-Carlo posterior means,
autograd scores, and the exact PF-ODE flow of one Gaussian.

Noise levels go through float32 inside the oracle (precond._bcast), so float64 comparisons allow ~1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ctmtool.core.analytic import ExactTrajectory, GaussianMixture

MEANS = np.array([[0.7, 0.0], [-0.3, 0.5], [0.0, -0.6]])
WEIGHTS = np.array([2.0, 5.0, 3.0])  # unnormalised on purpose
STDS = np.array([0.1, 0.2, 0.3])


def _mix(std=STDS) -> GaussianMixture:
    return GaussianMixture(torch.tensor(MEANS), torch.tensor(WEIGHTS), torch.tensor(std))


def _scipy_logpdf(x: np.ndarray, sigma: float, var: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, diag(var_k + sigma^2)) with scipy, var of shape (K, D)."""
    w = WEIGHTS / WEIGHTS.sum()
    dens = sum(w[k] * stats.multivariate_normal(MEANS[k], np.diag(var[k] + sigma**2)).pdf(x)
               for k in range(len(w)))
    return np.log(dens)


def _points(n=50, seed=0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.6


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_log_prob_matches_scipy(sigma):
    x = _points()
    got = _mix().log_prob(x, sigma).numpy()
    var = np.repeat(STDS[:, None] ** 2, 2, axis=1)
    assert np.allclose(got, _scipy_logpdf(x.numpy(), sigma, var), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_log_prob_per_dimension_std(sigma):
    std = np.array([[0.1, 0.3], [0.2, 0.05], [0.4, 0.15]])
    x = _points(seed=1)
    got = _mix(std).log_prob(x, sigma).numpy()
    assert np.allclose(got, _scipy_logpdf(x.numpy(), sigma, std**2), rtol=1e-6, atol=1e-6)


def test_log_prob_per_sample_sigma():
    x = _points(6)
    sig = torch.tensor([0.0, 0.1, 0.3, 1.0, 5.0, 80.0])
    got = _mix().log_prob(x, sig)
    var = np.repeat(STDS[:, None] ** 2, 2, axis=1)
    for i in range(6):
        want = _scipy_logpdf(x[i : i + 1].numpy(), float(sig[i]), var)
        assert got[i].item() == pytest.approx(float(np.squeeze(want)), rel=1e-6, abs=1e-6)


def test_log_prob_integrates_to_one():
    """On a fine grid, exp(log p) integrates to 1 (2-D Riemann sum)."""
    g = torch.linspace(-3, 3, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    h = float(g[1] - g[0])
    for sigma in (0.0, 0.3):
        total = float(_mix().log_prob(pts, sigma).exp().sum()) * h * h
        assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_one_gaussian_denoiser_closed_form(sigma):
    mu, sd = torch.tensor([[0.3, -0.2, 0.1]]), 0.4
    gm = GaussianMixture(mu, torch.tensor([1.0]), sd)
    x = _points(20).repeat(1, 2)[:, :3]
    want = mu.double() + sd**2 / (sd**2 + sigma**2) * (x - mu.double())
    assert torch.allclose(gm.denoise(x, sigma), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_denoise_matches_importance_sampling(sigma):
    """E[x0 | x0 + sigma n = x] by weighting prior draws with the likelihood N(x; x0, sigma^2 I)."""
    rng = np.random.default_rng(0)
    n = 400_000
    w = WEIGHTS / WEIGHTS.sum()
    comp = rng.choice(len(w), size=n, p=w)
    x0 = MEANS[comp] + STDS[comp, None] * rng.standard_normal((n, 2))
    queries = np.array([[0.6, 0.1], [-0.2, 0.3], [0.1, -0.4], [0.2, 0.2]])
    got = _mix().denoise(torch.tensor(queries), sigma).numpy()
    for q, g in zip(queries, got, strict=True):
        logw = -((x0 - q) ** 2).sum(1) / (2 * sigma**2)
        wt = np.exp(logw - logw.max())
        est = (wt[:, None] * x0).sum(0) / wt.sum()
        ess = wt.sum() ** 2 / (wt**2).sum()
        assert ess > 500
        assert np.allclose(g, est, atol=6 * sigma / math.sqrt(ess) + 2e-3), (q, g, est)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
def test_score_is_grad_log_prob(sigma):
    gm = _mix()
    x = _points(30).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    assert torch.allclose(gm.score(x.detach(), sigma), grad, rtol=1e-6, atol=1e-6)


def test_denoise_keeps_shape_and_dtype():
    means = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    gm = GaussianMixture(means, torch.ones(4), 0.2)
    assert gm.shape == (1, 2, 2) and gm.dim == 4
    x = torch.randn(5, 1, 2, 2)
    d = gm.denoise(x, torch.full((5,), 0.5))
    assert d.shape == x.shape and d.dtype == torch.float32
    # E[x0 | x] at sigma -> 0 is x; at sigma -> inf it is the mixture mean
    assert torch.allclose(gm.denoise(x, 1e-6), x, atol=1e-5)
    assert torch.allclose(gm.denoise(x, 1e4), means.mean(0, keepdim=True).expand_as(x).float(), atol=1e-4)


def test_sample_moments():
    gm = _mix()
    n = 100_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0)).double()
    assert x.shape == (n, 2) and gm.sample(3).dtype == torch.float32
    w = WEIGHTS / WEIGHTS.sum()
    mean = (w[:, None] * MEANS).sum(0)
    second = sum(w[k] * (np.diag([STDS[k] ** 2] * 2) + np.outer(MEANS[k], MEANS[k])) for k in range(3))
    cov = second - np.outer(mean, mean)
    assert np.allclose(x.mean(0).numpy(), mean, atol=4 * math.sqrt(cov.max() / n) + 1e-3)
    assert np.allclose(np.cov(x.numpy().T), cov, atol=5e-3)
    # well-separated components: every draw is near one mean, and the shares match the weights
    tight = GaussianMixture(torch.tensor(MEANS), torch.tensor(WEIGHTS), 0.02)
    y = tight.sample(20_000, generator=torch.Generator().manual_seed(1)).double()
    d = torch.cdist(y, torch.tensor(MEANS))
    assert float(d.min(1).values.max()) < 0.02 * 6
    share = torch.bincount(d.argmin(1), minlength=3).double() / len(y)
    assert np.allclose(share.numpy(), w, atol=0.015)


def test_from_config(toy_preset):
    gm = GaussianMixture.from_config(toy_preset.data.gmm)
    assert gm.means.shape == (8, 2)
    assert torch.allclose(gm.var, torch.full((8, 2), 0.05**2, dtype=torch.float64))
    assert torch.allclose(gm.log_weights.exp(), torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.allclose(gm.means.norm(dim=1), torch.full((8,), 0.7, dtype=torch.float64), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# ExactTrajectory: the PF-ODE flow map


MU = torch.tensor([[0.3, -0.2]])
V = 0.04


def _exact_flow(x, t, s):
    """One Gaussian N(mu, v I): x_s = mu + (x_t - mu) sqrt(v + s^2) / sqrt(v + t^2)."""
    return MU + (x - MU) * math.sqrt(V + s**2) / math.sqrt(V + t**2)


def _one_gaussian(steps=256) -> ExactTrajectory:
    return ExactTrajectory(GaussianMixture(MU, torch.tensor([1.0]), math.sqrt(V)), steps=steps)


# Heun's global error with 256 Karras-spaced steps; 80 -> 0.002 spans the stiff region near sigma ~ sqrt(v)
@pytest.mark.parametrize("t,s,tol", [(80.0, 0.002, 4e-4), (80.0, 2.515, 1e-5), (2.515, 0.002, 1e-4),
                                     (1.0, 0.5, 1e-5), (0.5, 0.01, 1e-4)])
def test_exact_trajectory_one_gaussian(t, s, tol):
    x = MU + math.sqrt(V + t**2) * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    want = _exact_flow(x, t, s)
    got = _one_gaussian().jump(x, t, s)
    scale = want.sub(MU).abs().max()
    assert float((got - want).abs().max() / scale) < tol


def test_exact_trajectory_per_sample_levels():
    x = MU + torch.randn(4, 2, generator=torch.Generator().manual_seed(1)) * 10
    t = torch.tensor([80.0, 10.0, 1.0, 0.5])
    s = torch.tensor([0.002, 2.0, 0.9, 0.1])
    got = _one_gaussian().jump(x, t, s)
    for i in range(4):
        want = _exact_flow(x[i : i + 1], float(t[i]), float(s[i]))
        assert torch.allclose(got[i : i + 1], want, rtol=1e-4, atol=1e-5)


def test_exact_trajectory_semigroup_mixture():
    """G(G(x, t, u), u, s) = G(x, t, s) on the 8-Gaussian ring (no closed form)."""
    gm = GaussianMixture(torch.tensor([[0.7 * math.cos(a), 0.7 * math.sin(a)]
                                       for a in np.arange(8) * math.pi / 4]),
                         torch.ones(8), 0.05)
    tr = ExactTrajectory(gm, steps=128)
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    for t, u, s in [(80.0, 2.5, 0.002), (10.0, 0.5, 0.1)]:
        two = tr.jump(tr.jump(x, t, u), u, s)
        one = tr.jump(x, t, s)
        assert torch.allclose(two, one, atol=2e-3), float((two - one).abs().max())
    # the end points lie on the data: within a few std of a mean
    end = tr.jump(x, 80.0, 0.002).double()
    assert float(torch.cdist(end, gm.means).min(1).values.max()) < 0.05 * 6


def test_exact_trajectory_g_and_denoise():
    tr = _one_gaussian()
    x = MU + torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    # g(x, t, t) is the denoiser: E[x0 | x_t] = mu + v / (v + t^2) (x_t - mu) for one Gaussian N(mu, v I)
    for t in (1.0, 0.7, 0.05):
        post = MU + V / (V + t**2) * (x - MU)
        torch.testing.assert_close(tr.g(x, t, t).double(), post.double(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tr.denoise(x, t).double(), post.double(), rtol=1e-5, atol=1e-5)
    # G = (s/t) x + (1 - s/t) g
    t, s = 1.0, 0.25
    assert torch.allclose((s / t) * x + (1 - s / t) * tr.g(x, t, s), _exact_flow(x, t, s), atol=1e-4)
    assert torch.allclose(tr(x, t, s), _exact_flow(x, t, s), atol=1e-4)
    assert (tr.sigma_min, tr.sigma_max) == (0.002, 80.0)
