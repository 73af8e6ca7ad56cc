"""Preconditioning against its published formulas: EDM Table 1 (Karras et al. 2022), the CTM jump
(Kim et al. 2024, Eq. 7; ctm-notes sec. 2) and the GCTM coefficients from second moments (ctm-notes sec. 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctmtool.precond import CTMPrecond, EDMPrecond, GCTMPrecond, VEPrecond, VPPrecond

SIGMAS = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 2.515, 10.0, 80.0], dtype=torch.float64)


class Probe(nn.Module):
    """A raw network F with a smooth, bounded, input-dependent output that records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, noise_t, noise_s=None, labels=None):
        self.calls.append((x.detach().clone(), noise_t.detach().clone(),
                           None if noise_s is None else noise_s.detach().clone()))
        ns = torch.zeros_like(noise_t) if noise_s is None else noise_s
        lab = noise_t.reshape(-1, *([1] * (x.ndim - 1)))
        lab_s = ns.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(0.7 * x + 0.3 * lab - 0.2 * lab_s + 0.1)


def F_of(x, noise_t, noise_s=None):
    """The Probe's function, recomputed independently in float64."""
    ns = torch.zeros_like(noise_t) if noise_s is None else noise_s
    return torch.tanh(0.7 * x + 0.3 * noise_t.reshape(-1, 1) - 0.2 * ns.reshape(-1, 1) + 0.1)


def _x(b=8, d=3, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# EDM, VP, VE denoisers (Karras et al. 2022, Table 1)


@pytest.mark.parametrize("sd", [0.5, 1.0, 0.2])
def test_edm_coefficients_table1(sd):
    m = EDMPrecond(Probe(), sigma_data=sd)
    c_skip, c_out, c_in, c_noise = m.coefficients(SIGMAS)
    for i, s in enumerate(SIGMAS.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(sd**2 + s**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12, abs=1e-15)


def test_edm_unit_variance_property():
    """EDM's design: c_in^2 (sd^2 + sigma^2) = 1 and c_out^2 = Var(x0 - c_skip x) for x0 with std sd."""
    sd = 0.5
    c_skip, c_out, c_in, _ = EDMPrecond(Probe(), sigma_data=sd).coefficients(SIGMAS)
    assert torch.allclose(c_in**2 * (sd**2 + SIGMAS**2), torch.ones_like(SIGMAS), rtol=1e-12)
    target_var = (1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2
    assert torch.allclose(c_out**2, target_var, rtol=1e-12)


def test_edm_denoise_composition():
    """D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4), per-sample sigma."""
    sd = 0.5
    net = Probe()
    m = EDMPrecond(net, sigma_data=sd)
    x = _x()
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 3.0, 10.0, 40.0, 80.0])
    d = m.denoise(x, sigma)
    x_in, noise, noise_s = net.calls[-1]
    s = sigma.double().reshape(-1, 1)
    xd = x.double()
    c_in = 1 / torch.sqrt(s**2 + sd**2)
    assert torch.allclose(x_in.double(), c_in * xd, rtol=1e-6)
    assert torch.allclose(noise.double(), sigma.double().log() / 4, rtol=1e-6)
    assert noise_s is None
    want = sd**2 / (s**2 + sd**2) * xd + s * sd / torch.sqrt(s**2 + sd**2) * F_of(c_in * xd, sigma.double().log() / 4)
    assert torch.allclose(d.double(), want, rtol=1e-5, atol=1e-6)
    # a scalar sigma is the same as a per-sample one
    assert torch.equal(m.denoise(x, 0.3), m.denoise(x, torch.full((8,), 0.3)))


def test_edm_boundary_condition():
    """c_skip -> 1 and c_out -> 0 as sigma -> 0: D(x, ~0) = x."""
    m = EDMPrecond(Probe())
    c_skip, c_out, _, _ = m.coefficients(torch.tensor([1e-8, 1e-5], dtype=torch.float64))
    assert c_skip.tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    assert c_out.tolist() == pytest.approx([0.0, 0.0], abs=1e-4)
    x = _x()
    assert torch.allclose(m.denoise(x, 1e-6), x, atol=1e-5)
    # and D -> F scaled by sd at large sigma: c_skip -> 0, c_out -> sd
    c_skip, c_out, _, _ = m.coefficients(torch.tensor([1e6], dtype=torch.float64))
    assert c_skip.item() == pytest.approx(0.0, abs=1e-12) and c_out.item() == pytest.approx(0.5, rel=1e-9)


def _vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


def test_vp_coefficients_round_trip():
    """c_noise = (M - 1) t(sigma), t the inverse of sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    m = VPPrecond(Probe())
    ts = [1e-5, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.8, 1.0]
    sig = torch.tensor([_vp_sigma(t) for t in ts], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = m.coefficients(sig)
    assert (c_noise / 999).tolist() == pytest.approx(ts, rel=1e-6)
    assert c_skip.tolist() == [1.0] * len(ts)
    assert torch.allclose(c_out, -sig, rtol=1e-14)
    assert torch.allclose(c_in, 1 / torch.sqrt(sig**2 + 1), rtol=1e-14)
    # the process's own range: sigma(epsilon_t) .. sigma(1)
    assert m.sigma_min == pytest.approx(_vp_sigma(1e-5), rel=1e-12)
    assert m.sigma_max == pytest.approx(_vp_sigma(1.0), rel=1e-12)
    assert m.sigma_max == pytest.approx(152.17, abs=0.01)
    # EDM's sampler clamps it to [0.002, 80]: an explicit range is kept
    m2 = VPPrecond(Probe(), sigma_min=0.002, sigma_max=80.0)
    assert (m2.sigma_min, m2.sigma_max) == (0.002, 80.0)


def test_vp_denoise_composition():
    net = Probe()
    m = VPPrecond(net)
    x, sigma = _x(), 2.0
    d = m.denoise(x, sigma)
    t = ((0.1**2 + 2 * 19.9 * math.log(1 + sigma**2)) ** 0.5 - 0.1) / 19.9
    x_in, noise, _ = net.calls[-1]
    assert torch.allclose(x_in, x / math.sqrt(sigma**2 + 1), rtol=1e-6)
    assert noise.tolist() == pytest.approx([999 * t] * 8, rel=1e-6)
    want = x.double() - sigma * F_of(x.double() / math.sqrt(sigma**2 + 1), torch.full((8,), 999 * t, dtype=torch.float64))
    assert torch.allclose(d.double(), want, atol=1e-5)


def test_ve_coefficients():
    m = VEPrecond(Probe())
    c_skip, c_out, c_in, c_noise = m.coefficients(SIGMAS)
    assert c_skip.tolist() == [1.0] * len(SIGMAS) and c_in.tolist() == [1.0] * len(SIGMAS)
    assert torch.equal(c_out, SIGMAS)
    assert torch.allclose(c_noise, torch.log(SIGMAS / 2), rtol=1e-14)
    assert (m.sigma_min, m.sigma_max) == (0.02, 100.0)


# --------------------------------------------------------------------------------------------------
# CTM (Kim et al. 2024, Eq. 6-7)


def test_ctm_g_composition():
    """g(x,t,s) = c_skip(t) x + c_out(t) F(c_in(t) x, ln(t)/4, ln(s)/4) with EDM coefficients of t."""
    sd = 0.5
    net = Probe()
    m = CTMPrecond(net, sigma_data=sd)
    x = _x()
    t = torch.tensor([0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 40.0, 80.0])
    s = t * torch.tensor([1.0, 0.5, 0.1, 0.9, 0.002, 0.3, 0.7, 0.01])
    g = m.g(x, t, s)
    x_in, nt, ns = net.calls[-1]
    td, sdd = t.double().reshape(-1, 1), s.double()
    assert torch.allclose(nt.double(), t.double().log() / 4, rtol=1e-6)
    assert torch.allclose(ns.double(), sdd.log() / 4, rtol=1e-6)
    c_in = 1 / torch.sqrt(td**2 + sd**2)
    assert torch.allclose(x_in.double(), c_in * x.double(), rtol=1e-6)
    want = sd**2 / (td**2 + sd**2) * x.double() + td * sd / torch.sqrt(td**2 + sd**2) * F_of(
        c_in * x.double(), t.double().log() / 4, sdd.log() / 4)
    assert torch.allclose(g.double(), want, atol=1e-5)


def test_ctm_jump_euler_form():
    """G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s)."""
    m = CTMPrecond(Probe())
    x = _x()
    t = torch.tensor([0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 40.0, 80.0])
    s = t * torch.tensor([1.0, 0.5, 0.1, 0.9, 0.002, 0.3, 0.7, 0.01])
    r = (s / t).reshape(-1, 1)
    want = r * x + (1 - r) * m.g(x, t, s)
    assert torch.allclose(m.jump(x, t, s), want, atol=1e-6)
    assert torch.allclose(m(x, t, s), want, atol=1e-6)  # forward is the jump


@pytest.mark.parametrize("scheme", ["edm", "vp", "ve"])
def test_ctm_jump_identity_at_s_equal_t(scheme):
    """G(x, t, t) = x exactly, whatever the network."""
    m = CTMPrecond(Probe(), scheme=scheme)
    x = _x() * 5
    for t in (0.002, 0.3, 2.515, 80.0):
        assert torch.equal(m.jump(x, t, t), x)
    t = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 80.0])
    assert torch.equal(m.jump(x, t, t), x)


def test_ctm_jump_to_zero_is_g():
    """s -> 0: G(x, t, s) -> g(x, t, s), a data estimate; g(x, t, t) is the denoiser."""
    m = CTMPrecond(Probe())
    x = _x()
    for t in (0.5, 80.0):
        s = 1e-9
        assert torch.allclose(m.jump(x, t, s), m.g(x, t, s), atol=1e-6)
    assert torch.equal(m.denoise(x, 0.7), m.g(x, 0.7, 0.7))


def test_ctm_boundary_at_sigma_min():
    """G(x, sigma, s) ~ x for sigma near 0 (c_skip -> 1, c_out -> 0)."""
    m = CTMPrecond(Probe())
    x = _x()
    assert torch.allclose(m.jump(x, 1e-6, 1e-7), x, atol=1e-5)
    assert torch.allclose(m.g(x, 1e-6, 1e-6), x, atol=1e-5)


@pytest.mark.parametrize("scheme,ref", [("edm", EDMPrecond), ("vp", VPPrecond), ("ve", VEPrecond)])
def test_ctm_scheme_coefficients(scheme, ref):
    """A student on a VP/VE teacher uses the teacher's coefficients, so g(x,t,t) matches it at init."""
    got = CTMPrecond(Probe(), scheme=scheme).coefficients(SIGMAS)
    want = ref(Probe()).coefficients(SIGMAS)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-14)


# --------------------------------------------------------------------------------------------------
# GCTM (ctm-notes sec. 6): x_t = (1 - t) x0 + t x1


TS = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("sd", [0.5, 0.3])
def test_gctm_independent_coupling_closed_form(sd):
    m = GCTMPrecond(Probe(), var0=sd**2, var1=1.0, cov01=0.0)
    c_skip, c_out, c_in, c_noise = m.coefficients(TS)
    for i, t in enumerate(TS.tolist()):
        var_t = (1 - t) ** 2 * sd**2 + t**2
        cov = (1 - t) * sd**2
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(var_t), rel=1e-12)
        assert c_skip[i].item() == pytest.approx(cov / var_t, rel=1e-12, abs=1e-15)
        # Var(x0 - c_skip x_t) = sd^2 - cov^2 / var_t  (floored at 1e-12 inside the model at t = 0)
        assert c_out[i].item() == pytest.approx(math.sqrt(max(sd**2 - cov**2 / var_t, 1e-12)), rel=1e-9, abs=1e-6)
        tc = min(max(t, 1e-4), 1 - 1e-4)
        assert c_noise[i].item() == pytest.approx(math.log(tc / (1 - tc)) / 4, rel=1e-12, abs=1e-15)
    # boundary: at t = 0 the model returns x (c_skip 1, c_out ~ 0); at t = 1 it knows nothing of x1 (c_skip 0)
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() < 1e-5
    assert c_skip[-1].item() == pytest.approx(0.0, abs=1e-15) and c_out[-1].item() == pytest.approx(sd)


@pytest.mark.parametrize("var0,var1,cov01", [(0.25, 1.0, 0.0), (0.25, 1.0, 0.3), (0.4, 0.6, -0.2), (1.0, 0.5, 0.6)])
def test_gctm_coefficients_are_the_gaussian_posterior(var0, var1, cov01):
    """For jointly Gaussian (x0, x1) the posterior mean E[x0 | x_t] is linear, = c_skip x_t, and the
    residual std is c_out: check both by least squares on samples of the coupling."""
    n = 200_000
    g = torch.Generator().manual_seed(1)
    cov = torch.tensor([[var0, cov01], [cov01, var1]], dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    pair = torch.randn(n, 2, generator=g, dtype=torch.float64) @ L.T
    x0, x1 = pair[:, 0], pair[:, 1]
    m = GCTMPrecond(Probe(), var0=var0, var1=var1, cov01=cov01)
    ts = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    c_skip, c_out, c_in, _ = m.coefficients(ts)
    for i, t in enumerate(ts.tolist()):
        xt = (1 - t) * x0 + t * x1
        slope = float((xt * x0).mean() / (xt * xt).mean())  # least squares through 0 (zero means)
        resid = x0 - slope * xt
        assert slope == pytest.approx(c_skip[i].item(), abs=0.01)
        assert float(resid.std()) == pytest.approx(c_out[i].item(), rel=0.01)
        assert float(xt.std()) * c_in[i].item() == pytest.approx(1.0, rel=0.01)
    # exactly: E[x0 | x_t] = c_skip x_t and Var(x0 | x_t) = c_out^2 from the 2x2 covariance
    for i, t in enumerate(ts.tolist()):
        a = torch.tensor([1 - t, t], dtype=torch.float64)
        var_t = float(a @ cov @ a)
        cov0t = float(cov[0] @ a)
        assert c_skip[i].item() == pytest.approx(cov0t / var_t, rel=1e-12)
        assert c_out[i].item() ** 2 == pytest.approx(var0 - cov0t**2 / var_t, rel=1e-9)


def test_gctm_optimal_g_for_gaussian_data():
    """With F = 0 (optimal for Gaussian data), g(x_t, t, t) = c_skip x_t = E[x0 | x_t]."""

    class Zero(nn.Module):
        def forward(self, x, noise_t, noise_s=None, labels=None):
            return torch.zeros_like(x)

    sd = 0.5
    m = GCTMPrecond(Zero(), var0=sd**2, var1=1.0, cov01=0.0)
    x = _x()
    for t in (0.1, 0.5, 0.9):
        post = (1 - t) * sd**2 / ((1 - t) ** 2 * sd**2 + t**2)
        assert torch.allclose(m.denoise(x, t), post * x, rtol=1e-6)


def test_gctm_jump():
    m = GCTMPrecond(Probe())
    x = _x()
    for t in (0.3, 0.9, 1.0):
        assert torch.equal(m.jump(x, t, t), x)
        s = 0.4 * t
        want = (s / t) * x + (1 - s / t) * m.g(x, t, s)
        assert torch.allclose(m.jump(x, t, s), want, atol=1e-6)
        assert torch.allclose(m.jump(x, t, 0.0), m.g(x, t, 0.0), atol=1e-7)
    # at t = 0 there is nothing left to transport
    assert torch.allclose(m.jump(x, 0.0, 0.0), x, atol=1e-4)
    assert torch.isfinite(m.jump(x, torch.tensor([1.0] * 8), torch.tensor([0.0] * 8))).all()
