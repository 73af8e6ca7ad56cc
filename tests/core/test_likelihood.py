"""Likelihoods against closed forms: the Gaussian-mixture oracle, Hutchinson's unbiasedness, the image units,
the ELBO."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ctmtool.config import load_preset
from ctmtool.core.analytic import GaussianMixture
from ctmtool.core.likelihood import (
    ODEOptions,
    bits_per_dim,
    combine_draws,
    dequantize,
    elbo_log_prob,
    evaluate,
    image_nll,
    make_estimator,
    mean_ci95,
    model_denoiser,
    ode_log_prob,
)
from ctmtool.core.models import Model, analytic_model, build_precond
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from tests.conftest import EDM_RANGE

TIGHT = ODEOptions(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def toy():
    """The toy preset's exact mixture, 200 held-out points (float64) and their exact log p_{sigma_min}."""
    model = analytic_model(load_preset("toy", list(EDM_RANGE)))  # N(0, 80^2 I) is p_80 to round-off
    gmm = model.net
    x = gmm.sample(200, torch.Generator().manual_seed(123)).double()
    return model, gmm, x, gmm.log_prob(x, gmm.sigma_min)


# --------------------------------------------------------------------------------------------------
# (a) the probability-flow ODE with the exact divergence matches the oracle


def test_ode_exact_divergence_matches_gmm_log_prob(toy):
    model, gmm, x, truth = toy
    est = ode_log_prob(model_denoiser(model), x, model.sigma_min, model.sigma_max, options=TIGHT)
    err = (est.log_prob - truth).abs()
    assert est.log_prob.dtype == torch.float64 and est.nfe > 0
    assert err.mean() < 0.01, f"mean abs error {err.mean():.4g} nats"
    assert torch.all(est.stderr == 0)


def test_ode_reference_tolerance_and_fixed_step(toy):
    model, gmm, x, truth = toy
    ref = ode_log_prob(gmm.denoise, x[:50], model.sigma_min, model.sigma_max)  # rtol = atol = 1e-3
    assert (ref.log_prob - truth[:50]).abs().mean() < 0.05
    rk4 = ode_log_prob(gmm.denoise, x[:50], model.sigma_min, model.sigma_max,
                       options=ODEOptions(method="rk4", steps=60))
    assert rk4.nfe == 4 * 60
    assert (rk4.log_prob - truth[:50]).abs().mean() < 0.01


def test_ode_float32(toy):
    model, gmm, x, truth = toy
    est = ode_log_prob(gmm.denoise, x[:20].float(), model.sigma_min, model.sigma_max)
    assert est.log_prob.dtype == torch.float32
    assert (est.log_prob.double() - truth[:20]).abs().mean() < 0.05


# --------------------------------------------------------------------------------------------------
# (b) Hutchinson's estimate is unbiased within its reported standard error


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_within_stderr(toy, dist):
    model, gmm, x, truth = toy
    opts = ODEOptions(divergence="hutchinson", probes=64, probe_dist=dist, rtol=1e-5, atol=1e-5)
    est = ode_log_prob(gmm.denoise, x[:20], model.sigma_min, model.sigma_max, options=opts,
                       generator=torch.Generator().manual_seed(7))
    diff, se = est.log_prob - truth[:20], est.stderr
    assert torch.all(se > 0)
    assert (diff / se).abs().max() < 5
    assert diff.sum().abs() / se.pow(2).sum().sqrt() < 4  # the pooled bias is within its error


def test_single_probe_has_no_stderr_and_probes_are_reproducible(toy):
    model, gmm, x, _ = toy
    opts = ODEOptions(divergence="hutchinson", probes=1)
    a = ode_log_prob(gmm.denoise, x[:8], model.sigma_min, model.sigma_max, options=opts,
                     generator=torch.Generator().manual_seed(1))
    b = ode_log_prob(gmm.denoise, x[:8], model.sigma_min, model.sigma_max, options=opts,
                     generator=torch.Generator().manual_seed(1))
    assert torch.all(a.stderr.isnan())
    assert torch.equal(a.log_prob, b.log_prob)


# --------------------------------------------------------------------------------------------------
# (c) images: quantisation, dequantisation and bits/dim against closed forms


def _pixel_gaussian(seed: int = 0) -> GaussianMixture:
    """One diagonal Gaussian over 3x8x8 images in [-1, 1]: means in [-0.5, 0.5], stds of 5 to 13 bins."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) - 0.5
    std = (5 + 8 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64)) / 128
    return GaussianMixture(mean, torch.ones(1), std, sigma_min=0.002, sigma_max=80.0)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 128).floor().clamp(0, 255).to(torch.uint8)


def _discrete_log_prob(gmm: GaussianMixture, v: torch.Tensor) -> torch.Tensor:
    """log P(v): the model N(mu, s^2 + sigma_min^2) integrated over each pixel's bin [v, v+1)/128 - 1 (B,)."""
    s = (gmm.var[0] + gmm.sigma_min**2).sqrt()
    lo = v.reshape(len(v), -1).double() / 128 - 1
    hi = lo + 1 / 128
    p = torch.special.ndtr((hi - gmm.means[0]) / s) - torch.special.ndtr((lo - gmm.means[0]) / s)
    return p.log().sum(1)


def test_bits_per_dim_units():
    d = 3 * 8 * 8
    logp = torch.tensor([100.0, -50.0], dtype=torch.float64)
    bpd = bits_per_dim(image_nll(logp, d), d)
    assert torch.allclose(bpd, -logp / (d * math.log(2)) + 7)
    v = torch.tensor([[0, 255]], dtype=torch.uint8)
    x = dequantize(v, torch.Generator().manual_seed(0), torch.float64)
    assert x.min() >= -1 and x.max() < 1 and x[0, 0] < -1 + 1 / 128 and x[0, 1] >= 1 - 1 / 128


def test_image_path_matches_closed_forms():
    gmm = _pixel_gaussian()
    v = _quantise(gmm.sample(24, torch.Generator().manual_seed(5)).double())
    ds = Dataset(v, name="gauss8")
    # the Jacobian of a diagonal Gaussian's denoiser is diagonal, so one Rademacher probe gives its trace
    # exactly
    opts = ODEOptions(divergence="hutchinson", probes=1, rtol=1e-5, atol=1e-5)
    ode = make_estimator(gmm.denoise, gmm.sigma_min, gmm.sigma_max, "ode", opts)
    kw = dict(batch=12, seed=3, dtype=torch.float64)
    ev = evaluate(ode, ds, **kw)
    oracle = lambda x, labels, gen: _exact(gmm, x)  # noqa: E731
    ref = evaluate(oracle, ds, **kw)  # the same dequantised points (same seed), the exact density
    assert ev.dim == 192 and ev.is_image
    assert (ev.bpd - ref.bpd).abs().max() < 0.01
    assert (ev.bpd - ref.bpd).abs().mean() < 1e-3
    # against the discrete probability of the quantised data: the dequantisation gap is ~ 1/(24 s^2) nats/dim
    discrete = bits_per_dim(-_discrete_log_prob(gmm, v), 192)
    assert ev.bpd.mean() - discrete.mean() < 0.01
    assert ev.bpd.mean() - discrete.mean() > -0.005  # a bound, up to the spread of the uniform draws


def test_image_exact_divergence_agrees():
    gmm = _pixel_gaussian(2)
    ds = Dataset(_quantise(gmm.sample(3, torch.Generator().manual_seed(4)).double()), name="gauss8")
    kw = dict(batch=3, seed=0, dtype=torch.float64)
    ev = evaluate(make_estimator(gmm.denoise, gmm.sigma_min, gmm.sigma_max, "ode", TIGHT), ds, **kw)
    ref = evaluate(lambda x, labels, gen: _exact(gmm, x), ds, **kw)
    assert (ev.bpd - ref.bpd).abs().max() < 0.01


def _exact(gmm, x):
    from ctmtool.core.likelihood import Estimate

    lp = gmm.log_prob(x, gmm.sigma_min)
    return Estimate(lp, torch.zeros_like(lp), 0)


def test_dequant_draws_tighten_the_bound():
    gmm = _pixel_gaussian(1)
    v = _quantise(gmm.sample(16, torch.Generator().manual_seed(2)).double())
    ds = Dataset(v, name="gauss8")
    oracle = lambda x, labels, gen: _exact(gmm, x)  # noqa: E731
    one = evaluate(oracle, ds, batch=16, seed=0, dtype=torch.float64)
    many = evaluate(oracle, ds, batch=16, seed=0, dtype=torch.float64, dequant_draws=32)
    mean = evaluate(oracle, ds, batch=16, seed=0, dtype=torch.float64, dequant_draws=32, draw_average="mean")
    discrete = bits_per_dim(-_discrete_log_prob(gmm, v), 192)
    assert torch.all(many.bpd <= mean.bpd + 1e-12)  # log-mean-exp >= mean of logs (Jensen)
    assert (many.bpd - discrete).mean() < (mean.bpd - discrete).mean()
    assert (many.bpd - discrete).mean() > -1e-3 and (one.bpd.mean() - discrete.mean()).abs() < 0.01


def test_combine_draws_and_ci():
    lp = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    se = torch.ones(2, 2, dtype=torch.float64)
    m, s = combine_draws(lp, se, "mean")
    assert torch.allclose(m, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(s, torch.full((2,), math.sqrt(2) / 2, dtype=torch.float64))
    lme, _ = combine_draws(lp, se, "logmeanexp")
    assert torch.allclose(lme[1], torch.tensor(1.0, dtype=torch.float64))
    assert lme[0] == pytest.approx(math.log((1 + math.e**2) / 2))
    mean, lo, hi = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and hi - mean == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-3)
    assert mean_ci95(torch.tensor([1.0]))[1] is None


# --------------------------------------------------------------------------------------------------
# (d) the ELBO bounds the NLL from above


def test_elbo_is_an_upper_bound_close_to_exact(toy):
    model, gmm, x, truth = toy
    est = elbo_log_prob(gmm.denoise, x, model.sigma_min, model.sigma_max, samples=256,
                        generator=torch.Generator().manual_seed(0))
    gap = (-est.log_prob) - (-truth)  # ELBO NLL - exact NLL, per item
    pooled_se = est.stderr.pow(2).mean().sqrt() / math.sqrt(len(x))
    assert gap.mean() > -4 * pooled_se  # a bound (tight for the exact denoiser), within MC error
    assert gap.mean().abs() < 0.25
    assert torch.all(est.stderr > 0)


def test_elbo_of_a_wrong_denoiser_stays_above_the_data_entropy(toy):
    """Cross-entropy >= entropy: a mis-scaled denoiser's ELBO NLL exceeds the true NLL on average."""
    model, gmm, x, truth = toy
    wrong = lambda z, sigma, labels=None: gmm.denoise(z, sigma * 1.5)  # noqa: E731
    est = elbo_log_prob(wrong, x, model.sigma_min, model.sigma_max, samples=128,
                        generator=torch.Generator().manual_seed(1))
    pooled_se = est.stderr.pow(2).mean().sqrt() / math.sqrt(len(x))
    assert (-est.log_prob).mean() > (-truth).mean() + 0.1
    assert pooled_se < 0.2


# --------------------------------------------------------------------------------------------------
# models: a CTM through g(x, t, t); GCTMs refused; options validated


def test_ctm_network_runs_through_g_and_gctm_is_refused():
    preset = load_preset("toy", list(EDM_RANGE))
    ctm = Model("ctm", build_precond("ctm", preset, (2,)).eval(), preset, (2,))
    x = torch.randn(4, 2)
    est = ode_log_prob(model_denoiser(ctm), x, ctm.sigma_min, ctm.sigma_max)
    assert torch.isfinite(est.log_prob).all()
    gctm = Model("gctm", build_precond("gctm", preset, (2,)), preset, (2,))
    with pytest.raises(ValueError, match="GCTM defines no data density") as info:
        model_denoiser(gctm)
    assert not isinstance(info.value, UserError)  # jobs/likelihood.check_density refuses it for a user


@pytest.mark.parametrize("kw", [dict(divergence="trace"), dict(probe_dist="uniform"), dict(method="rk45"),
                                dict(probes=0), dict(rtol=0.0)])
def test_bad_options_are_value_errors_of_the_maths(kw):
    with pytest.raises(ValueError) as info:  # a user's options: jobs/likelihood.NLLOptions.check
        ODEOptions(**kw)
    assert not isinstance(info.value, UserError)


def test_evaluate_points_reports_per_item_and_summary(toy):
    model, gmm, x, truth = toy
    ds = Dataset(x[:30].float(), name="pts")
    est = make_estimator(gmm.denoise, model.sigma_min, model.sigma_max, "ode", TIGHT)
    ticks = []
    ev = evaluate(est, ds, batch=16, dtype=torch.float64, progress=ticks.append)
    assert ticks == [16, 14] and len(ev.names) == 30 and not ev.is_image
    s = ev.summary()
    assert s["n"] == 30 and s["dim"] == 2
    assert s["nll_nats"] == pytest.approx(float(-gmm.log_prob(x[:30].float().double(), 0.002).mean()),
                                          abs=0.01)
    assert s["bits_per_dim"] == pytest.approx(s["nll_nats"] / (2 * math.log(2)))
    lo, hi = s["ci95"]["nll_nats"]
    assert lo < s["nll_nats"] < hi


def test_probe_passes_split_without_changing_the_result(toy):
    model, gmm, x, _ = toy
    opts = ODEOptions(divergence="hutchinson", probes=6, rtol=1e-4, atol=1e-4)
    one = ode_log_prob(gmm.denoise, x[:10], model.sigma_min, model.sigma_max, options=opts,
                       generator=torch.Generator().manual_seed(3))
    split = ode_log_prob(gmm.denoise, x[:10], model.sigma_min, model.sigma_max,
                         options=ODEOptions(**{**opts.__dict__, "max_rows": 25}),
                         generator=torch.Generator().manual_seed(3))
    assert (torch.allclose(one.log_prob, split.log_prob, atol=1e-9)
            and torch.allclose(one.stderr, split.stderr, atol=1e-9))


def test_time_variables_agree_and_karras_time_takes_fewer_steps(toy):
    """The same ODE in sigma^(1/7) (the default) and in ln sigma: both at the exact log-density, the Karras
    variable with fewer evaluations at the same tolerance (the dynamics are spread as the sampling
    schedule)."""
    model, gmm, x, truth = toy
    opts = dict(rtol=1e-4, atol=1e-4)
    karras = ode_log_prob(gmm.denoise, x[:50], model.sigma_min, model.sigma_max, options=ODEOptions(**opts))
    log = ode_log_prob(gmm.denoise, x[:50], model.sigma_min, model.sigma_max,
                       options=ODEOptions(time="log", **opts))
    for est in (karras, log):
        assert (est.log_prob - truth[:50]).abs().mean() < 0.01
    assert (karras.log_prob - log.log_prob).abs().max() < 0.02
    assert karras.nfe < log.nfe, (karras.nfe, log.nfe)


def test_ode_float32_levels_match_float64_levels():
    """A float32 network gets float32 levels (no float64 promotion): within float32 rounding of the float64
    solve."""
    torch.manual_seed(0)
    net32 = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))
    net64 = copy.deepcopy(net32).double()
    seen = []

    def denoiser(net):
        def denoise(x, sigma, labels=None):
            seen.append((x.dtype, sigma.dtype))
            return x / (1 + sigma[:, None] ** 2) + 0.1 * net(torch.cat([x, sigma.log()[:, None]], 1))
        return denoise

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    opts = ODEOptions(rtol=1e-5, atol=1e-5)
    est = ode_log_prob(denoiser(net32), x, 0.002, 80.0, options=opts)
    assert set(seen) == {(torch.float32, torch.float32)} and est.log_prob.dtype == torch.float32
    est64 = ode_log_prob(denoiser(net64), x.double(), 0.002, 80.0, options=opts)
    assert (est.log_prob.double() - est64.log_prob).abs().max() < 1e-3
