"""Editing with trajectory models (`ctmtool.core.editing`): SDEdit and stroke editing for CTM and GCTM alike:
levels of equal signal-to-noise ratio, schedules from the level to the end, faithfulness, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctmtool.core import editing as E
from ctmtool.core.models import Model
from ctmtool.core.sampling import ImageNoise
from ctmtool.errors import UserError
from ctmtool.jobs.plan import editing_level, plan_editing

IMG = (1, 8, 8)
MOMENTS = {"moments": {"var0": 0.25, "var1": 0.5, "cov01": 0.1}}


@pytest.fixture
def gctm_model(make_model, tiny_preset):
    """A GCTM with random weights on 1x8x8 images for a coupling."""
    def build(coupling="independent"):
        return make_model("gctm", IMG, tiny_preset("toy-translate", f'gctm.coupling="{coupling}"'), MOMENTS,
                          scale=0.2)

    return build


@pytest.fixture
def ctm_model(make_model):
    """A CTM on 1x8x8 images: random weights, or as initialised (F = 0: g = c_skip x, a smooth denoiser)."""
    return lambda randomise=True: make_model("ctm", IMG, scale=0.2 if randomise else None)


def test_strength_maps_to_levels_of_equal_snr(gctm_model, ctm_model):
    """A strength s is GCTM time t = s and CTM sigma = s / (1 - s): (1 - t) x + t z, divided by 1 - t, is
    x + sigma z, so both edits start from the same signal-to-noise ratio (the same picture, rescaled)."""
    g, c = gctm_model(), ctm_model()
    x, z = torch.rand(2, *IMG) * 2 - 1, torch.randn(2, *IMG)
    for s in (0.05, 0.3, 0.5, 0.9):
        t, sigma = E.strength_to_level(g, s), E.strength_to_level(c, s)
        assert t == s and sigma == pytest.approx(s / (1 - s), rel=1e-12)
        torch.testing.assert_close(g.net.perturb(x, t, z) / (1 - t), c.net.perturb(x, sigma, z))
    assert E.strength_to_level(c, 1.0) == c.sigma_max == 80.0  # capped at the top of the CTM's range
    assert E.strength_to_level(g, 1.0) == 1.0
    for bad in (0.0, -0.1, 1.5):  # settings are checked by the jobs layer (the maths trusts its inputs)
        with pytest.raises(UserError, match="`strength`"):
            editing_level(c, bad)


@pytest.mark.parametrize("kind", ["ctm", "gctm"])
def test_edit_schedules_run_from_the_level_to_the_end(kind, gctm_model, ctm_model):
    m = ctm_model() if kind == "ctm" else gctm_model()
    level = E.strength_to_level(m, 0.4)
    for nfe in (1, 3):
        s = E.edit_schedule(m, level, nfe)
        assert len(s) == nfe + 1 and float(s[0]) == pytest.approx(level)
        assert float(s[-1]) == (m.sigma_min if kind == "ctm" else 0.0) and (s[1:] < s[:-1]).all()


def test_sdedit_keeps_more_of_the_image_at_lower_strength(gctm_model, ctm_model):
    m = ctm_model(False)  # F = 0 at init: g = c_skip x, a smooth denoiser
    x = torch.rand(4, *IMG, generator=torch.Generator().manual_seed(0)) * 2 - 1
    changes = []
    for strength in (0.01, 0.5, 0.9):
        level = E.strength_to_level(m, strength)
        y = E.sdedit(m, x, level, plan_editing(m, level), noise=ImageNoise(range(4), IMG))
        assert y.shape == x.shape and y.abs().max() <= 1
        changes.append(float((y - x).abs().mean()))
    assert changes[0] < 0.05 and changes[0] < changes[1] < changes[2]
    a = E.sdedit(m, x, 1.0, plan_editing(m, 1.0), generator=torch.Generator().manual_seed(5))
    b = E.sdedit(m, x, 1.0, plan_editing(m, 1.0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sdedit_with_a_gaussian_source_gctm_and_refusals(gctm_model, ctm_model):
    m = gctm_model()
    x = torch.rand(3, *IMG) * 2 - 1
    y = E.sdedit(m, x, 0.5, plan_editing(m, 0.5, nfe=2, gamma=0.3), noise=ImageNoise(range(3), IMG))
    assert y.shape == x.shape and torch.isfinite(y).all()
    # the refusals are the jobs layer's plan (the maths trusts its inputs)
    with pytest.raises(UserError, match="SDEdit"):
        plan_editing(gctm_model("corrupt:sr2"), 0.5)
    with pytest.raises(UserError, match="range"):
        plan_editing(ctm_model(), 500.0)
    teacher = Model("teacher", nn.Identity(), m.preset, IMG)
    with pytest.raises(UserError, match="CTM or a GCTM"):
        plan_editing(teacher, 0.5)
    with pytest.raises(UserError, match="CTM or a GCTM"):
        editing_level(teacher, 0.5)


def test_stroke_edit_composites_and_keeps_the_unmasked_part(gctm_model, ctm_model):
    m = ctm_model()
    image = torch.zeros(2, *IMG)
    strokes = image.clone()
    strokes[:, :, 2:5, 2:5] = 0.8
    mask = E.stroke_mask(image, strokes)
    assert mask.shape == (2, 1, 8, 8) and int(mask.sum()) == 2 * 9
    assert torch.equal(E.composite(image, strokes), strokes)
    plan = plan_editing(m, 2.0)
    out = E.stroke_edit(m, image, strokes, None, 2.0, plan, noise=ImageNoise(range(2), IMG),
                        keep_unmasked=True)
    assert torch.equal(out * (1 - mask), image * (1 - mask))
    free = E.stroke_edit(m, image, strokes, None, 2.0, plan, noise=ImageNoise(range(2), IMG))
    assert not torch.equal(free * (1 - mask), image * (1 - mask))
