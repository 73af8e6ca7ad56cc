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
