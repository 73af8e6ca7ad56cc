"""Preconditioning against its published formulas: EDM Table 1 (Karras et al. 2022), the CTM jump
(Kim et al. 2024, Eq. 7) and the GCTM coefficients from second moments (Kim et al. 2024b)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctmtool.core.precond import CTMPrecond, EDMPrecond, GCTMPrecond, VEPrecond, VPPrecond

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
    want = (sd**2 / (s**2 + sd**2) * xd
            + s * sd / torch.sqrt(s**2 + sd**2) * F_of(c_in * xd, sigma.double().log() / 4))
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
    want = x.double() - sigma * F_of(x.double() / math.sqrt(sigma**2 + 1),
                                     torch.full((8,), 999 * t, dtype=torch.float64))
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


def _ctm_g_by_hand(x, t, s, sd=0.5):
    """g(x, t, s) = c_skip(t) x + c_out(t) F(c_in(t) x, ln(t)/4, ln(s)/4) with EDM's Table 1 coefficients,
    float64."""
    t, s = (torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]),
            torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0]))
    tt, xd = t.reshape(-1, 1), x.double()
    c_in = 1 / torch.sqrt(tt**2 + sd**2)
    return (sd**2 / (tt**2 + sd**2) * xd
            + tt * sd / torch.sqrt(tt**2 + sd**2) * F_of(c_in * xd, t.log() / 4, s.log() / 4))


def test_ctm_jump_euler_form():
    """G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s) (Eq. 7), g computed by hand from the Probe's F."""
    m = CTMPrecond(Probe())
    x = _x()
    t = torch.tensor([0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 40.0, 80.0])
    s = t * torch.tensor([1.0, 0.5, 0.1, 0.9, 0.002, 0.3, 0.7, 0.01])
    r = (s.double() / t.double()).reshape(-1, 1)
    want = r * x.double() + (1 - r) * _ctm_g_by_hand(x, t.double(), s.double())
    assert torch.allclose(m.jump(x, t, s).double(), want, atol=1e-5)
    assert torch.allclose(m(x, t, s).double(), want, atol=1e-5)  # forward is the jump


@pytest.mark.parametrize("scheme", ["edm", "vp", "ve"])
def test_ctm_jump_identity_at_s_equal_t(scheme):
    """G(x, t, t) = x exactly, whatever the network."""
    m = CTMPrecond(Probe(), scheme=scheme)
    x = _x() * 5
    for t in (0.002, 0.3, 2.515, 80.0):
        assert torch.equal(m.jump(x, t, t), x)
    t = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 80.0])
    assert torch.equal(m.jump(x, t, t), x)


def test_ctm_jump_to_zero_is_g_and_g_at_s_equal_t_is_the_denoiser():
    """s -> 0: G(x, t, s) -> g(x, t, s), a data estimate; denoise(x, t) = g(x, t, t) (both by hand)."""
    m = CTMPrecond(Probe())
    x = _x()
    for t in (0.5, 80.0):
        assert torch.allclose(m.jump(x, t, 1e-9).double(), _ctm_g_by_hand(x, t, 1e-9), atol=1e-5)
    assert torch.allclose(m.denoise(x, 0.7).double(), _ctm_g_by_hand(x, 0.7, 0.7), atol=1e-5)


def test_ctm_jump_is_continuous_as_s_approaches_t():
    """G(x, t, s) -> x as s -> t (the identity at s = t is not a special case), at rate (t - s)."""
    m = CTMPrecond(Probe())
    x = _x() * 2
    for t in (0.05, 1.0, 80.0):
        gaps = [float((m.jump(x, t, t * (1 - eps)).double() - x.double()).abs().max())
                for eps in (1e-2, 1e-3)]
        assert 0 < gaps[1] < gaps[0] / 5 and gaps[1] < 0.02  # shrinks like eps


def test_ctm_boundary_at_sigma_min():
    """G(x, sigma, s) ~ x for sigma near 0 (c_skip -> 1, c_out -> 0)."""
    m = CTMPrecond(Probe())
    x = _x()
    assert torch.allclose(m.jump(x, 1e-6, 1e-7), x, atol=1e-5)
    assert torch.allclose(m.g(x, 1e-6, 1e-6), x, atol=1e-5)


def test_ctm_scheme_coefficients_by_hand():
    """A student on a VP/VE teacher uses that teacher's Table 1 coefficients (so that g(x,t,t) is the teacher
    at init), worked out by hand at sigma = 0.002, 1, 2 and 80 (sigma_data 0.5; VP beta_d 19.9, beta_min
    0.1)."""
    sig = torch.tensor([0.002, 1.0, 2.0, 80.0], dtype=torch.float64)
    edm = CTMPrecond(Probe(), scheme="edm").coefficients(sig)
    # c_skip = 0.25 / (sigma^2 + 0.25), c_out = 0.5 sigma / sqrt(sigma^2 + 0.25), c_in = 1 / sqrt(.),
    # ln(sigma)/4
    assert edm[0].tolist() == pytest.approx([0.25 / 0.250004, 0.25 / 1.25, 0.25 / 4.25, 0.25 / 6400.25],
                                            rel=1e-12)
    assert edm[1].tolist() == pytest.approx([0.001 / 0.250004**0.5, 0.5 / 1.25**0.5, 1 / 4.25**0.5,
                                             40 / 6400.25**0.5],
                                            rel=1e-12)
    assert edm[1][-1].item() == pytest.approx(0.49999023466, rel=1e-10)
    assert edm[2].tolist() == pytest.approx([0.250004**-0.5, 1.25**-0.5, 4.25**-0.5, 6400.25**-0.5],
                                            rel=1e-12)
    assert edm[3].tolist() == pytest.approx([math.log(0.002) / 4, 0.0, math.log(2) / 4, 1.0955066586684703],
                                            rel=1e-12)
    ve = CTMPrecond(Probe(), scheme="ve").coefficients(sig)
    assert ve[0].tolist() == [1.0] * 4 and ve[2].tolist() == [1.0] * 4 and ve[1].tolist() == sig.tolist()
    assert ve[3].tolist() == pytest.approx([math.log(0.001), math.log(0.5), 0.0, math.log(40)], rel=1e-12)
    vp = CTMPrecond(Probe(), scheme="vp").coefficients(sig)
    assert vp[0].tolist() == [1.0] * 4 and vp[1].tolist() == (-sig).tolist()
    assert vp[2].tolist() == pytest.approx([1 / math.sqrt(1.000004), 0.5**0.5, 0.2**0.5, 6401**-0.5],
                                           rel=1e-12)
    # c_noise = 999 t(sigma), t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d
    assert vp[3].tolist() == pytest.approx([0.03980213341495378, 258.7013021703638, 999 * 0.3971909927722238,
                                            932.5776320974633], rel=1e-9)


# --------------------------------------------------------------------------------------------------
# GCTM (Kim et al. 2024b): x_t = (1 - t) x0 + t x1


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
        assert c_out[i].item() == pytest.approx(math.sqrt(max(sd**2 - cov**2 / var_t, 1e-12)), rel=1e-9,
                                                abs=1e-6)
        tc = min(max(t, 1e-4), 1 - 1e-4)
        assert c_noise[i].item() == pytest.approx(math.log(tc / (1 - tc)) / 4, rel=1e-12, abs=1e-15)
    # boundary: at t = 0 the model returns x (c_skip 1, c_out ~ 0); at t = 1 it knows nothing of x1 (c_skip 0)
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() < 1e-5
    assert c_skip[-1].item() == pytest.approx(0.0, abs=1e-15) and c_out[-1].item() == pytest.approx(sd)


@pytest.mark.parametrize("var0,var1,cov01",
                         [(0.25, 1.0, 0.0), (0.25, 1.0, 0.3), (0.4, 0.6, -0.2), (1.0, 0.5, 0.6)])
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


def _gctm_g_by_hand(x, t, s, var0=0.25, var1=1.0, cov01=0.0, t_min=1e-4):
    """g(x, t, s) with the coupling's posterior coefficients (Kim et al. 2024b) and labels ln(t/(1-t))/4,
    float64."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
    tt, xd = t.reshape(-1, 1), x.double()
    var_t = (1 - tt) ** 2 * var0 + tt**2 * var1 + 2 * tt * (1 - tt) * cov01
    cov0t = (1 - tt) * var0 + tt * cov01
    c_out = (var0 - cov0t**2 / var_t).clamp_min(1e-12).sqrt()

    def label(v):
        v = v.clamp(t_min, 1 - t_min)
        return (v / (1 - v)).log() / 4

    return cov0t / var_t * xd + c_out * F_of(xd / var_t.sqrt(), label(t), label(s.clamp_min(1e-12)))


def test_gctm_jump():
    """G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s) on the interpolation path, g by hand; G(x, t, t) = x."""
    m = GCTMPrecond(Probe(), var0=0.3, var1=0.8, cov01=0.2)
    x = _x()
    for t in (0.3, 0.9, 1.0):
        assert torch.equal(m.jump(x, t, t), x)
        s = 0.4 * t
        want = 0.4 * x.double() + 0.6 * _gctm_g_by_hand(x, t, s, 0.3, 0.8, 0.2)
        assert torch.allclose(m.jump(x, t, s).double(), want, atol=1e-5)
        assert torch.allclose(m.jump(x, t, 0.0).double(), _gctm_g_by_hand(x, t, 0.0, 0.3, 0.8, 0.2),
                              atol=1e-5)
    # at t = 0 there is nothing left to transport
    assert torch.allclose(m.jump(x, 0.0, 0.0), x, atol=1e-4)
    assert torch.isfinite(m.jump(x, torch.tensor([1.0] * 8), torch.tensor([0.0] * 8))).all()


@pytest.mark.parametrize("var0,var1,cov01", [(0.25, 1.0, 0.0), (0.3, 0.8, 0.2), (0.4, 0.6, -0.2)])
def test_gctm_coefficients_at_the_ends(var0, var1, cov01):
    """t = 0: x_t is x0 itself (c_skip 1, c_out 0); t = 1: x_t = x1 and E[x0 | x1] = cov/var1 x1 with residual
    variance var0 - cov^2/var1 (0 and sqrt(var0) for the independent coupling)."""
    c_skip, c_out, c_in, _ = GCTMPrecond(Probe(), var0, var1, cov01).coefficients(
        torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert c_skip[0].item() == pytest.approx(1.0, rel=1e-12) and c_out[0].item() <= 1e-6
    assert c_in[0].item() == pytest.approx(var0**-0.5) and c_in[1].item() == pytest.approx(var1**-0.5)
    assert c_skip[1].item() == pytest.approx(cov01 / var1, abs=1e-12)
    assert c_out[1].item() == pytest.approx(math.sqrt(var0 - cov01**2 / var1), rel=1e-9)


# --------------------------------------------------------------------------------------------------
# The trajectory interface: where CTM and GCTM differ (schedules, re-noising, the forward process, priors)


def _linear_coefficients(fn):
    """(a, b) of a map x, z -> a x + b z, read off by probing with ones and zeros."""
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    return float(fn(one, zero)), float(fn(zero, one))


@pytest.mark.parametrize("s,t", [(0.002, 80.0), (0.5, 2.0), (1.0, 1.0), (10.0, 10.5)])
def test_ctm_renoise_keeps_the_marginal(s, t):
    """x_s = x0 + s n re-noised to t must be distributed as x0 + t n: x keeps coefficient 1 and the added
    noise has variance t^2 - s^2 (Kim et al. 2024, Alg. 1); checked exactly and on Gaussian data by
    sampling."""
    m = CTMPrecond(Probe())
    a, b = _linear_coefficients(lambda x, z: m.renoise(x, s, t, z))
    assert a == 1.0 and b**2 == pytest.approx(t**2 - s**2, rel=1e-12, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(200_000, generator=g, dtype=torch.float64)
    xs = m.perturb(x0, s, torch.randn(200_000, generator=g, dtype=torch.float64))
    xt = m.renoise(xs, s, t, torch.randn(200_000, generator=g, dtype=torch.float64))
    assert float(xt.var()) == pytest.approx(0.25 + t**2, rel=0.01)
    noise = xt - x0  # the data part is untouched: what was added is N(0, t^2), independent of x0
    assert float(noise.std()) == pytest.approx(t, rel=0.01)
    assert abs(float(torch.corrcoef(torch.stack([noise, x0]))[0, 1])) < 0.01


@pytest.mark.parametrize("source_noise", [0.0, 0.3])
@pytest.mark.parametrize("s,t", [(0.0, 1.0), (0.2, 0.7), (0.5, 0.5), (0.05, 0.3)])
def test_gctm_renoise_keeps_the_marginal(s, t, source_noise):
    """x_s = (1-s) x0 + s std n re-noised to t must be (1-t) x0 + t std n for any x0: the x0 coefficient
    becomes (1-t) and the noise variance t^2 std^2 (Kim et al. 2024b); exactly, then by sampling."""
    std = math.sqrt(1 + source_noise**2)
    m = GCTMPrecond(Probe(), source_std=std)
    a, b = _linear_coefficients(lambda x, z: m.renoise(x, s, t, z))
    assert a * (1 - s) == pytest.approx(1 - t, rel=1e-12)
    assert (a * s * std) ** 2 + b**2 == pytest.approx((t * std) ** 2, rel=1e-12, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    x0 = torch.where(torch.rand(200_000, generator=g) < 0.5, -0.5, 0.5).double()  # not Gaussian: two points
    xs = m.perturb(x0, s, torch.randn(200_000, generator=g, dtype=torch.float64))
    xt = m.renoise(xs, s, t, torch.randn(200_000, generator=g, dtype=torch.float64))
    noise = xt - (1 - t) * x0
    assert float(noise.std()) == pytest.approx(t * std, rel=0.01, abs=1e-12)
    assert abs(float(torch.corrcoef(torch.stack([noise, x0]))[0, 1])) < 0.01  # independent of the data


def test_perturb_and_prior_closed_forms():
    """CTM: x0 + t z, prior sigma_max z; GCTM: (1 - t) x0 + t std z, prior std z (its source at t = 1)."""
    x0, z = _x(seed=1), _x(seed=2)
    ctm = CTMPrecond(Probe(), sigma_max=40.0)
    assert torch.equal(ctm.perturb(x0, 3.0, z), x0 + 3.0 * z)
    assert torch.equal(ctm.prior(z), 40.0 * z)
    gctm = GCTMPrecond(Probe(), source_std=1.25)
    assert torch.allclose(gctm.perturb(x0, 0.3, z), 0.7 * x0 + 0.375 * z, atol=1e-6)
    assert torch.equal(gctm.perturb(x0, 0.0, z), x0)
    assert torch.allclose(gctm.prior(z), 1.25 * z)


def test_default_schedules_end_points_and_middle():
    """CTM: the Karras grid sigma_max .. sigma_min (NFE 2's middle ((80^(1/7) + 0.002^(1/7))/2)^7 = 2.5152);
    GCTM: its training grid from t = 1 to 0 through t = sigma / (1 + sigma)."""
    ctm = CTMPrecond(Probe())
    assert ctm.default_schedule(1).tolist() == [80.0, 0.002]
    two = ctm.default_schedule(2).tolist()
    assert (two[0] == 80.0 and two[2] == pytest.approx(0.002)
            and two[1] == pytest.approx(2.515218976147159, rel=1e-9))
    gctm = GCTMPrecond(Probe())
    assert gctm.default_schedule(1).tolist() == [1.0, 0.0]
    assert gctm.default_schedule(2).tolist() == pytest.approx([1.0, 2.515218976147159 / 3.515218976147159,
                                                               0.0])
    for m in (ctm, gctm):
        grid = m.default_schedule(5)
        assert len(grid) == 6 and grid.dtype == torch.float64 and (grid[1:] < grid[:-1]).all()


def test_strength_levels_have_equal_snr():
    """Strength u is GCTM time u and CTM sigma u / (1 - u), clamped to the CTM's range: (1-u) x + u z over
    (1 - u) is x + sigma z."""
    ctm, gctm = CTMPrecond(Probe()), GCTMPrecond(Probe())
    for u in (0.01, 0.25, 0.5, 0.75, 0.95):
        assert gctm.strength_level(u) == u
        assert ctm.strength_level(u) == pytest.approx(u / (1 - u), rel=1e-12)
    assert ctm.strength_level(1.0) == 80.0 and ctm.strength_level(0.9999) == 80.0
    assert ctm.strength_level(1e-9) == pytest.approx(0.002 * 1.0001)  # just above sigma_min, where jumps end
