"""ctmtool.jobs.items: sampler settings from the preset's [sample], inapplicable options refused, results that
do not depend on the batch size, and outputs checked finite."""

from __future__ import annotations

import pytest
import torch

from ctmtool.config import override_preset
from ctmtool.core.models import analytic_model, load_model
from ctmtool.errors import UserError
from ctmtool.jobs.items import check_finite, draw, edit_items, sample, translate_items
from ctmtool.jobs.plan import plan_editing, plan_sampling, plan_translation
from tests.cli.conftest import tiny_checkpoint
from tests.conftest import EDM_RANGE


@pytest.fixture
def ctm(tmp_path):
    return load_model(tiny_checkpoint(tmp_path / "c.safetensors",
                                      overrides=["sample.nfe=2", "sample.gamma=0.5"]))


def test_defaults_come_from_the_preset(ctm, toy_preset):
    toy_preset = override_preset(toy_preset, list(EDM_RANGE))  # the tiny checkpoint's range
    o = plan_sampling(ctm)
    assert (o.solver, o.nfe, o.gamma, o.sigmas) == ("gamma", 2, 0.5, None)
    assert plan_sampling(ctm, nfe=3, gamma=0.0).nfe == 3
    teacher = analytic_model(toy_preset)
    assert plan_sampling(teacher).solver == "heun"  # [sample] solver gamma does not apply to a denoiser
    for kwargs, words in (({"nfe": 1}, "`nfe`"), ({"gamma": 0.3}, "`gamma`"),
                          ({"class_label": 0}, "unconditional"), ({"sigmas": [80.0, 1.0, 0.0]}, None)):
        if words is None:
            # a final 0 for an ODE solver
            assert list(plan_sampling(teacher, **kwargs).sigmas) == [80.0, 1.0, 0.0]
        else:
            with pytest.raises(UserError, match=words):
                plan_sampling(teacher, **kwargs)
    with pytest.raises(UserError, match="outside the model's range"):
        plan_sampling(ctm, sigmas=[80.0, 0.001])


def test_samples_do_not_depend_on_the_batch(ctm):
    a, _ = draw(ctm, 5, plan_sampling(ctm, nfe=2, gamma=0.5, batch=5), seed=3)
    b, _ = draw(ctm, 5, plan_sampling(ctm, nfe=2, gamma=0.5, batch=2), seed=3)
    assert torch.allclose(a, b, atol=1e-6)
    s = sample(ctm, plan_sampling(ctm, nfe=2, gamma=0.5, batch=4), n=5, seed=3)
    assert torch.allclose(s.x, a, atol=1e-6) and s.nfe == 2 and len(s.schedule) == 3


def test_translate_and_edit_refuse_what_they_cannot_do(ctm, tmp_path):
    with pytest.raises(UserError, match="needs a GCTM"):
        plan_translation(ctm)
    gctm = load_model(tiny_checkpoint(tmp_path / "g.safetensors", kind="gctm", preset="toy-translate"))
    x = torch.randn(5, 2)
    y1 = translate_items(gctm, x, plan_translation(gctm, batch=5))
    y2 = translate_items(gctm, x, plan_translation(gctm, batch=2))
    assert torch.allclose(y1, y2, atol=1e-6)
    with pytest.raises(UserError, match="nothing to do"):
        translate_items(gctm, x[:0], plan_translation(gctm))
    e = edit_items(ctm, x, 1.0, plan_editing(ctm, 1.0, batch=3), seed=1)
    assert e.shape == x.shape and torch.isfinite(e).all()


def test_check_finite():
    check_finite(torch.zeros(2, 2), "x", "fix")
    with pytest.raises(UserError, match=r"items with them: 1\); fix it"):
        check_finite(torch.tensor([[0.0, float("inf")], [1.0, 2.0]]), "x", "fix it")
