"""PF-ODE solvers against the exact flow of one Gaussian, their orders, and their cost in denoiser calls."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtool.core.analytic import GaussianMixture
from ctmtool.core.schedules import karras_sigmas
from ctmtool.core.solvers import SOLVERS, euler, heun, solver_nfe

MU = torch.tensor([[0.3, -0.2]])
V = 0.04


def _gauss() -> GaussianMixture:
    return GaussianMixture(MU, torch.tensor([1.0]), math.sqrt(V))


def _flow(x, t, s):
    """Exact PF-ODE map of N(mu, v I): x_s = mu + (x_t - mu) sqrt(v + s^2) / sqrt(v + t^2)."""
    return MU.double() + (x.double() - MU.double()) * math.sqrt(V + s**2) / math.sqrt(V + t**2)


class Counting:
    """Wraps a denoiser and counts its calls and evaluated items."""

    def __init__(self, model):
        self.model, self.calls, self.levels = model, 0, []

    def denoise(self, x, sigma, labels=None):
        self.calls += 1
        self.levels.append(torch.as_tensor(sigma).clone())
        return self.model.denoise(x, sigma, labels)


def _start(t, n=64, seed=0):
    return MU + math.sqrt(V + t**2) * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def _err(solver, steps, t=10.0, s=0.5):
    x = _start(t)
    sig = karras_sigmas(steps + 1, sigma_min=s, sigma_max=t)
    out = solver(_gauss(), x, sig)
    return float((out.double() - _flow(x, t, s)).abs().max())


def test_heun_is_second_order():
    e = [_err(heun, n) for n in (4, 8, 16)]
    assert e[0] > e[1] > e[2]
    for a, b in zip(e, e[1:], strict=False):
        assert 3.0 < a / b < 5.0, e


def test_euler_is_first_order():
    e = [_err(euler, n) for n in (8, 16, 32)]
    assert e[0] > e[1] > e[2]
    for a, b in zip(e, e[1:], strict=False):
        assert 1.6 < a / b < 2.5, e
    assert _err(heun, 32) < _err(euler, 32) / 4  # and the gap grows with steps


def test_heun_accurate_with_many_steps():
    x = _start(80.0)
    sig = karras_sigmas(257, sigma_min=0.002, sigma_max=80.0)
    out = heun(_gauss(), x, sig)
    want = _flow(x, 80.0, 0.002)
    assert float((out.double() - want).abs().max() / (want - MU).abs().max()) < 4e-4


def test_last_step_into_zero_is_the_denoiser():
    """An Euler step from t to 0 lands on D(x, t): x + (0 - t)(x - D)/t = D."""
    gm = _gauss()
    x = _start(0.5)
    for solver in (euler, heun):
        out = solver(gm, x, torch.tensor([0.5, 0.0], dtype=torch.float64))
        assert torch.allclose(out, gm.denoise(x, 0.5), atol=1e-6)


@pytest.mark.parametrize("name,calls", [("heun", 35), ("euler", 18)])
def test_edm_grid_costs(name, calls):
    """EDM's CIFAR-10 sampler: 18 Karras levels then 0 -> Heun uses 35 denoiser calls, Euler 18."""
    m = Counting(_gauss())
    sig = torch.cat([karras_sigmas(18), torch.zeros(1, dtype=torch.float64)])
    out = SOLVERS[name](m, _start(80.0, 8), sig)
    assert m.calls == calls
    assert solver_nfe(name, 18, ends_at_zero=True) == calls
    assert torch.isfinite(out).all()
    # nobody asks the denoiser at sigma = 0
    assert all((lv > 0).all() for lv in m.levels)


def test_solver_nfe():
    assert solver_nfe("heun", 18) == 35
    assert solver_nfe("heun", 18, ends_at_zero=False) == 36
    assert solver_nfe("euler", 18, ends_at_zero=False) == 18
    m = Counting(_gauss())
    heun(m, _start(10.0, 4), karras_sigmas(5, sigma_min=0.5, sigma_max=10.0))
    assert m.calls == 8


@pytest.mark.parametrize("solver", [heun, euler])
def test_per_sample_schedules(solver):
    """A (steps + 1, B) schedule gives each sample what running it alone gives."""
    gm = GaussianMixture(torch.tensor([[0.7, 0.0], [-0.7, 0.0], [0.0, 0.7]]), torch.tensor([1.0, 2.0, 1.0]),
                         0.1)
    starts = torch.tensor([80.0, 10.0, 2.0, 0.5])
    ends = torch.tensor([0.002, 1.0, 0.0, 0.3], dtype=torch.float64)
    cols = []
    for t, s in zip(starts.tolist(), ends.tolist(), strict=True):
        i = torch.linspace(0, 1, 9, dtype=torch.float64)
        cols.append((t ** (1 / 7) + i * (max(s, 1e-12) ** (1 / 7) - t ** (1 / 7))) ** 7 if s > 0
                    else torch.cat([karras_sigmas(8, 0.002, t), torch.zeros(1, dtype=torch.float64)]))
    sched = torch.stack(cols, 1)  # (9, 4)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(5)) * starts[:, None]
    together = solver(gm, x, sched)
    for b in range(4):
        alone = solver(gm, x[b : b + 1], sched[:, b])
        assert torch.allclose(together[b : b + 1], alone, atol=1e-6), b


def test_solvers_keep_shape_and_need_no_grad():
    gm = GaussianMixture(torch.zeros(1, 1, 2, 2), torch.ones(1), 0.5)
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    out = heun(gm, x, torch.tensor([5.0, 1.0, 0.0]))
    assert out.shape == x.shape and out.dtype == torch.float32 and not out.requires_grad
