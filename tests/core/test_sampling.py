"""gamma-sampling (Kim et al. 2024, Alg. 1), per-image noise streams and batched generation."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtool.config import override_preset
from ctmtool.core.analytic import ExactTrajectory, GaussianMixture
from ctmtool.core.models import Model, analytic_model, build_precond
from ctmtool.core.precond import GCTMPrecond, NoisePath
from ctmtool.core.sampling import (
    ImageNoise,
    default_schedule,
    gamma_sample,
    teacher_schedule,
)
from ctmtool.core.schedules import karras_sigmas
from ctmtool.errors import UserError, as_flags
from ctmtool.jobs.plan import plan_explicit
from tests.conftest import EDM_RANGE
from tests.conftest import plan_and_generate as generate

SIG = [80.0, 17.53, 2.515, 0.17, 0.002]  # NFE 4 (the CTM reference code's default schedule)


class Recorder(NoisePath):
    """A fake trajectory model on the noise path: records (t, s, x) of every jump and returns zeros."""

    def __init__(self):
        self.calls = []

    def jump(self, x, t, s, labels=None):
        self.calls.append((float(t), float(s), x.clone()))
        return torch.zeros_like(x)


class Ones:
    """A noise source returning known draws: 1, 2, 3, ... times a ones tensor."""

    def __init__(self, shape):
        self.shape, self.n = shape, 0

    def __call__(self):
        self.n += 1
        return torch.full(self.shape, float(self.n))


def _no_noise():
    raise AssertionError("gamma = 0 must not draw noise")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_gamma0_jumps_along_the_schedule(n):
    sig = [80.0, 0.002] if n == 1 else karras_sigmas(n + 1).tolist()
    m = Recorder()
    x = torch.randn(5, 2)
    out = gamma_sample(m, x, sig, noise=_no_noise, gamma=0.0)
    assert [(t, s) for t, s, _ in m.calls] == [(sig[i], sig[i + 1]) for i in range(n)]
    assert torch.equal(m.calls[0][2], x)
    for _, _, xin in m.calls[1:]:
        assert torch.equal(xin, torch.zeros_like(x))  # the previous jump's output, nothing added
    assert torch.equal(out, torch.zeros_like(x))


def test_gamma1_is_cm_multistep():
    """gamma = 1: jump to sigma_min, then re-noise to sigma_{i+1} with sqrt(sigma_{i+1}^2 - sigma_min^2) z."""
    m = Recorder()
    noise = Ones((3, 2))
    out = gamma_sample(m, torch.randn(3, 2), SIG, noise=noise, gamma=1.0)
    assert [(t, s) for t, s, _ in m.calls] == [(SIG[i], 0.002) for i in range(4)]
    for i, (_, _, xin) in enumerate(m.calls[1:]):
        want = math.sqrt(SIG[i + 1] ** 2 - 0.002**2) * (i + 1)  # noise draw number i + 1
        assert torch.allclose(xin, torch.full((3, 2), want), rtol=1e-6)
    assert noise.n == 3  # no noise after the last jump
    assert torch.equal(out, torch.zeros(3, 2))


@pytest.mark.parametrize("gamma", [0.2, 0.5, 0.9])
def test_intermediate_gamma_levels(gamma):
    m = Recorder()
    noise = Ones((2, 2))
    gamma_sample(m, torch.randn(2, 2), SIG, noise=noise, gamma=gamma)
    smin = SIG[-1]
    for i, (t, s, _) in enumerate(m.calls):
        assert t == SIG[i]
        assert s == pytest.approx(math.sqrt(1 - gamma**2) * (SIG[i + 1] - smin) + smin, rel=1e-12)
        assert SIG[i + 1] >= s >= smin
    for i, (_, _, xin) in enumerate(m.calls[1:]):
        s = m.calls[i][1]
        assert torch.allclose(xin, torch.full((2, 2), math.sqrt(SIG[i + 1] ** 2 - s**2) * (i + 1)), rtol=1e-6)
    assert noise.n == 3


def test_gamma_sample_refusals():
    """Programming errors only (a user's gamma is refused by `jobs/plan.plan_sampling`,
    test_generate_refusals)."""
    with pytest.raises(ValueError, match="gamma"):
        gamma_sample(Recorder(), torch.zeros(1, 2), SIG, noise=Ones((1, 2)), gamma=1.5)
    with pytest.raises(ValueError, match="gamma"):
        gamma_sample(Recorder(), torch.zeros(1, 2), SIG, noise=Ones((1, 2)), gamma=-0.1)
    # without `noise`, the re-noising draws come from `generator` (k-diffusion style), reproducibly
    a, b = (gamma_sample(Recorder(), torch.zeros(1, 2), SIG, gamma=0.5,
                         generator=torch.Generator().manual_seed(0))
            for _ in range(2))
    assert torch.equal(a, b)
    # one step never needs noise
    gamma_sample(Recorder(), torch.zeros(1, 2), [80.0, 0.002], noise=None, gamma=0.5)


# --------------------------------------------------------------------------------------------------
# Empirically, on the exact trajectory of one Gaussian N(mu, v I)

MU = torch.tensor([[0.3, -0.2]])
V = 0.04


def _stream(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(n, 2, generator=g)


def _exact(steps=32) -> ExactTrajectory:
    return ExactTrajectory(GaussianMixture(MU, torch.tensor([1.0]), math.sqrt(V)), steps=steps)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0])
def test_injected_noise_variance_empirical(gamma):
    """Two runs from the same start with independent noise: the flow is linear for one Gaussian, so
    Var(run_a - run_b) = 2 (sigma_1^2 - s^2) (v + sigma_min^2) / (v + sigma_1^2)."""
    sig = [80.0, 2.515, 0.002]
    n = 3000
    x = 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) + MU
    tr = _exact()
    na, nb = _stream(n, 1), _stream(n, 2)
    a = gamma_sample(tr, x, sig, na, gamma=gamma).double()
    b = gamma_sample(tr, x, sig, nb, gamma=gamma).double()
    s = math.sqrt(1 - gamma**2) * (sig[1] - sig[2]) + sig[2]
    want = 2 * (sig[1] ** 2 - s**2) * (V + sig[2] ** 2) / (V + sig[1] ** 2)
    got = float((a - b).var())
    assert got == pytest.approx(want, rel=0.1)  # 6000 values: relative s.e. of a variance ~1.8%


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gamma_sampling_keeps_the_marginals(gamma):
    """With the exact jump, every gamma lands on the data distribution, and after each re-noising x is
    distributed as the data convolved with N(0, sigma_{i+1}^2 I)."""

    class Tap(ExactTrajectory):
        def __init__(self):
            super().__init__(_exact().denoiser, steps=32)
            self.inputs = []

        def jump(self, x, t, s, labels=None):
            self.inputs.append((t, x.double()))
            return super().jump(x, t, s, labels)

    n = 3000
    tr = Tap()
    x = 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1)) + MU
    sig = [80.0, 9.72, 0.47, 0.002]
    out = gamma_sample(tr, x, sig, _stream(n, 3), gamma=gamma).double()
    for t, xin in tr.inputs:
        assert float(xin.var(0).mean()) == pytest.approx(V + t**2, rel=0.06), t
    assert float(out.var(0).mean()) == pytest.approx(V, rel=0.06)
    assert torch.allclose(out.mean(0), MU[0].double(), atol=4 * math.sqrt(V / n) + 2e-3)


# --------------------------------------------------------------------------------------------------
# Batched generation: per-image seeds


def _ctm_model(toy_preset, gm=None) -> Model:
    gm = gm or GaussianMixture.from_config(toy_preset.data.gmm)
    return Model("ctm", ExactTrajectory(gm, steps=8), toy_preset, gm.shape)


def _all(gen):
    return torch.cat([x for x, _ in gen])


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_generate_independent_of_batch_teacher(toy_preset, batch):
    model = analytic_model(toy_preset)
    ref = _all(generate(model, 7, seed=3, batch=7, solver="heun", steps=4))
    got = _all(generate(model, 7, seed=3, batch=batch, solver="heun", steps=4))
    assert got.shape == (7, 2)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_generate_independent_of_batch_ctm_gamma(toy_preset, batch):
    model = _ctm_model(toy_preset)
    ref = _all(generate(model, 7, seed=11, batch=7, solver="gamma", nfe=3, gamma=0.5))
    got = _all(generate(model, 7, seed=11, batch=batch, solver="gamma", nfe=3, gamma=0.5))
    assert torch.allclose(got, ref, atol=1e-6)


def test_generate_seed_offsets(toy_preset):
    """Sample i of a run with seed s is sample 0 of a run with seed s + i; other seeds differ."""
    model = analytic_model(toy_preset)
    run = _all(generate(model, 4, seed=10, batch=4, solver="euler", steps=3))
    for i in range(4):
        one = _all(generate(model, 1, seed=10 + i, solver="euler", steps=3))
        assert torch.equal(one[0], run[i])
    other = _all(generate(model, 4, seed=20, batch=4, solver="euler", steps=3))
    assert not torch.allclose(other, run)
    # progress is reported per batch
    seen = []
    list(generate(model, 5, seed=0, batch=2, solver="euler", steps=2, progress=seen.append))
    assert seen == [2, 2, 1]


def test_image_noise_streams():
    a = ImageNoise([5, 6, 7], (1, 2, 2))
    b = ImageNoise([6], (1, 2, 2))
    za, zb = a(), b()
    assert za.shape == (3, 1, 2, 2) and torch.equal(za[1], zb[0])
    assert torch.equal(a()[1], b()[0])  # the second draws agree too
    lab = ImageNoise([1, 2], (2,)).integers(10)
    assert lab.shape == (2,) and ((lab >= 0) & (lab < 10)).all()


def test_generate_nfe1_lands_on_data(toy_preset):
    """One exact jump from 80 to 0.002 maps noise onto the 8-Gaussian ring (radius 0.7, std 0.05)."""
    model = _ctm_model(toy_preset)
    model.net.steps = 64
    x = _all(generate(model, 200, seed=0, batch=200, solver="gamma", nfe=1)).double()
    d = torch.cdist(x, model.net.denoiser.means).min(1).values
    assert float(d.max()) < 0.05 * 6


# --------------------------------------------------------------------------------------------------
# Schedules and refusals


def test_schedules_for_models(toy_preset):
    toy_preset = override_preset(toy_preset, list(EDM_RANGE))  # EDM's 0.002..80, as the schedules below
    ctm = _ctm_model(toy_preset)
    assert default_schedule(ctm, 2).tolist() == pytest.approx([80.0, 2.515, 0.002], rel=1e-3)
    t = teacher_schedule(analytic_model(toy_preset), 18)
    assert len(t) == 19 and t[-1].item() == 0.0 and t[0].item() == pytest.approx(80.0)
    assert teacher_schedule(analytic_model(toy_preset), 1).tolist() == [80.0, 0.0]
    assert plan_explicit(ctm, solver="gamma",
                         sigmas=[80.0, 1.0, 0.002]).schedule.tolist() == [80.0, 1.0, 0.002]
    gctm = Model("gctm", build_precond("gctm", toy_preset, (2,)), toy_preset, (2,))
    g = default_schedule(gctm, 2)
    assert g[0].item() == 1.0 and g[-1].item() == 0.0
    assert g[1].item() == pytest.approx(2.515 / 3.515, rel=1e-3)  # t = sigma / (1 + sigma)


def test_gctm_schedule_follows_the_presets_sigma_range(toy_preset):
    """The GCTM's default schedule is its training grid: a preset with another sigma range moves the middle
    time (a fixed 0.002..80 grid would start NFE > 1 sampling from times the model never saw)."""
    p = override_preset(toy_preset, ["diffusion.sigma_max=20.0", "diffusion.sigma_min=0.01"])
    g = default_schedule(Model("gctm", build_precond("gctm", p, (2,)), p, (2,)), 2)
    mid = karras_sigmas(3, 0.01, 20.0)[1].item()
    assert g.tolist() == pytest.approx([1.0, mid / (1 + mid), 0.0])


def test_generate_refusals(toy_preset):
    ctm = _ctm_model(toy_preset)
    with pytest.raises(UserError, match="gamma"):
        _all(generate(ctm, 2, solver="gamma", nfe=2, gamma=1.5))
    with pytest.raises(UserError, match="gamma"):
        _all(generate(ctm, 2, solver="gamma", nfe=2, gamma=-1.0))
    with pytest.raises(UserError, match="nfe"):
        _all(generate(ctm, 2, solver="gamma", nfe=0))
    with pytest.raises(UserError, match="`steps`"):
        _all(generate(analytic_model(toy_preset), 2, solver="heun", steps=0))
    for bad in ([0.002, 80.0], [80.0, 80.0, 0.002], [80.0], [80.0, -1.0]):
        with pytest.raises(UserError, match="`sigmas`"):
            _all(generate(ctm, 2, solver="gamma", sigmas=bad))
    with pytest.raises(UserError, match="unknown solver"):
        _all(generate(ctm, 2, solver="rk4"))


def test_gamma_sampling_a_teacher_is_refused(toy_preset):
    with pytest.raises(UserError) as info:
        _all(generate(analytic_model(toy_preset), 2, solver="gamma"))
    msg = str(info.value)
    assert "`solver` heun" in msg and "distill" in msg and "--solver heun" in as_flags(msg)


class GCTMRecorder(torch.nn.Module):
    """A stand-in GCTM (unit Gaussian source): every jump returns zeros and records its input."""

    renoise = GCTMPrecond.renoise
    source_std = 1.0

    def __init__(self):
        super().__init__()
        self.inputs = []

    def jump(self, x, t, s, labels=None):
        self.inputs.append((x.clone(), t, s))
        return torch.zeros_like(x)


def test_gamma_one_renoises_along_the_interpolation():
    """gamma = 1: jump to 0, then x_t' = (1 - t') x0_hat + t' z: the second jump sees std t'."""
    rec = GCTMRecorder()
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    gamma_sample(rec, torch.randn(20000, 2), [1.0, 0.6, 0.0], noise=lambda: z, gamma=1.0)
    (_, t0, s0), (x_second, t1, s1) = rec.inputs
    assert (t0, s0, t1, s1) == (1.0, 0.0, 0.6, 0.0)
    assert torch.allclose(x_second, 0.6 * z)
    rec2 = GCTMRecorder()
    gamma_sample(rec2, torch.randn(4, 2), [1.0, 0.6, 0.0], gamma=0.0)
    assert [(t, s) for _, t, s in rec2.inputs] == [(1.0, 0.6), (0.6, 0.0)]
