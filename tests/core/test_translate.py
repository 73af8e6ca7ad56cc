"""GCTM translation (Kim et al. 2024b, Sec. 5): shapes, determinism, schedules, per-item noise, refusals."""

from __future__ import annotations

import pytest
import torch

from ctmtool.core import translate as T
from ctmtool.core.sampling import ImageNoise
from ctmtool.errors import UserError
from ctmtool.jobs.plan import plan_translation as plan

IMG = (1, 8, 8)
MOMENTS = {"moments": {"var0": 0.25, "var1": 0.5, "cov01": 0.1}}


@pytest.fixture
def gctm_model(make_model, tiny_preset):
    """A GCTM with random weights for a coupling (and source noise), on points or images."""
    def build(coupling="toy-ot:moons", shape=(2,), seed=0, source_noise=0.0):
        p = tiny_preset("toy-translate", f'gctm.coupling="{coupling}"', f"gctm.source_noise={source_noise}")
        return make_model("gctm", shape, p, MOMENTS, scale=0.2, seed=seed)

    return build


@pytest.mark.parametrize("nfe", [1, 2])
def test_translate_shapes_and_determinism(nfe, gctm_model):
    m = gctm_model()
    x1 = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    a, b = T.translate(m, x1, plan(m, nfe=nfe)), T.translate(m, x1, plan(m, nfe=nfe))
    assert a.shape == x1.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, x1)


def test_one_step_translation_is_the_jump_from_one_to_zero(gctm_model):
    m = gctm_model()
    x1 = torch.randn(6, 2)
    with torch.no_grad():
        expect = m.net.jump(x1, torch.ones(6), torch.zeros(6))
    assert torch.allclose(T.translate(m, x1, plan(m)), expect)
    assert T.translation_schedule(m, 1).tolist() == [1.0, 0.0]
    t3 = T.translation_schedule(m, 3)
    assert t3[0] == 1 and t3[-1] == 0 and (t3[1:] < t3[:-1]).all()


def test_stochastic_multistep_is_seeded_per_item_and_batch_independent(gctm_model):
    m = gctm_model("independent", IMG)
    x1 = torch.randn(6, *IMG, generator=torch.Generator().manual_seed(1))
    whole = T.translate(m, x1, plan(m, nfe=3, gamma=0.5), noise=ImageNoise(range(6), IMG))
    parts = torch.cat([T.translate(m, x1[:2], plan(m, nfe=3, gamma=0.5), noise=ImageNoise(range(2), IMG)),
                       T.translate(m, x1[2:], plan(m, nfe=3, gamma=0.5), noise=ImageNoise(range(2, 6), IMG))])
    assert torch.allclose(whole, parts, atol=1e-6)
    assert whole.abs().max() <= 1  # images are clamped
    other = T.translate(m, x1, plan(m, nfe=3, gamma=0.5), noise=ImageNoise(range(10, 16), IMG))
    assert not torch.allclose(whole, other)


def test_source_noise_is_added_only_with_a_noise_source(gctm_model):
    m = gctm_model(source_noise=0.05)
    x1 = torch.randn(4, 2)
    plain = T.translate(m, x1, plan(m))
    noisy = T.translate(m, x1, plan(m), noise=ImageNoise(range(4), (2,)))
    assert torch.equal(plain, T.translate(m, x1, plan(m))) and not torch.allclose(plain, noisy)


def test_translate_refusals(gctm_model, make_model):
    """The jobs layer's plan refuses what cannot be done; the maths raises ValueError for programming
    errors."""
    with pytest.raises(UserError, match="GCTM"):
        plan(make_model("ctm", (2,)))
    with pytest.raises(UserError, match="gamma"):
        plan(gctm_model(), nfe=2, gamma=0.5)
    with pytest.raises(UserError, match="`nfe` must be at least 1"):
        plan(gctm_model(), nfe=0)
    m = gctm_model()
    with pytest.raises(ValueError, match="shape"):
        T.translate(m, torch.randn(3, 3), plan(m))


class _ExactGaussianGCTM:
    """A stand-in GCTM whose g(x, t, t) is E[x0 | x_t] in closed form for x0 ~ N(m0, v0 I) and an independent
    x1 ~ N(m1, v1 I), and whose jump G(x, t, s) is the exact flow: the ODE is then an affine map."""

    def __init__(self, m0, v0, m1, v1):
        from ctmtool.core.schedules import gctm_times

        self.m0, self.v0, self.m1, self.v1, self._times = m0, v0, m1, v1, gctm_times

    def _stats(self, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        return (1 - t) * self.m0 + t * self.m1, ((1 - t) ** 2 * self.v0 + t**2 * self.v1).sqrt()

    def denoise(self, x, t, labels=None):
        mean, sd = self._stats(t)
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        return (self.m0 + (1 - tt) * self.v0 / sd**2 * (x.double() - mean)).float()

    def jump(self, x, t, s, labels=None):
        (mt, st), (ms, ss) = self._stats(t), self._stats(s)
        return (ms + ss / st * (x.double() - mt)).float()

    def default_schedule(self, nfe):
        return self._times(nfe + 1)


def test_encode_solves_the_ode_up_to_the_closed_form_flow():
    """For Gaussian x0 and x1 the probability-flow map is x1 = m1 + sqrt(v1 / v0)(x0 - m0): `encode` converges
    to it as the steps grow (Heun's error, and the first step's), and decoding the encoded point gives x0."""
    from types import SimpleNamespace

    net = _ExactGaussianGCTM(0.5, 0.04, -1.0, 1.0)
    model = SimpleNamespace(net=net, data_shape=(3,), is_image=False)
    x0 = 0.5 + 0.2 * torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    exact = -1.0 + (1.0 / 0.04) ** 0.5 * (x0 - 0.5)
    err = {steps: float((T.encode(model, x0, steps) - exact).abs().max()) for steps in (4, 18, 100)}
    assert err[4] < 1.0 and err[18] < 0.15 and err[100] < 0.01 and err[100] < err[18] / 10  # |x1| up to ~3
    x1 = T.encode(model, x0, 100)
    sched = T.encode_schedule(model, 18)
    assert float(sched[-1]) == 1.0 and 0 < float(sched[0]) < 0.01 and bool((sched.diff() > 0).all())
    back = net.jump(x1, 1.0, 0.0)
    assert float((back - x0).abs().max()) < 0.01
