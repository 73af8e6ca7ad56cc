"""The typed interfaces (ctmtool/core/interfaces.py) hold for every implementation, and a setting that does
nothing for a model kind is refused with one line."""

import pytest
import torch

from ctmtool.core.interfaces import TrainingTerms, Trajectory
from ctmtool.core.precond import EDMPrecond
from ctmtool.errors import UserError
from ctmtool.gctm.couplings import IndependentCoupling
from ctmtool.train.gctm_objective import gctm_objective
from ctmtool.train.run import train
from ctmtool.train.trajectory import ctm_objective
from tests.conftest import build_model, tiny_preset

MOMENTS = {"var0": 0.25, "var1": 1.0, "cov01": 0.0}


@pytest.mark.parametrize("kind", ["ctm", "gctm"])
def test_trajectory_models_have_the_whole_interface(kind):
    _, net = build_model(kind, meta={"moments": MOMENTS} if kind == "gctm" else None)
    # runtime_checkable: every method and attribute of the Protocol is there
    assert isinstance(net, Trajectory)


def test_a_denoiser_is_not_a_trajectory_model():
    _, net = build_model("teacher")
    assert isinstance(net, EDMPrecond) and not isinstance(net, Trajectory)


def test_both_training_terms_have_every_method_the_objective_calls():
    p = tiny_preset("toy", "ctm.teacher=self")
    ctm = ctm_objective(p, (2,), torch.device("cpu"), teacher=None)
    gctm = gctm_objective(tiny_preset("toy-translate"), (2,), torch.device("cpu"), IndependentCoupling(),
                          MOMENTS)
    for obj in (ctm, gctm):
        assert isinstance(obj.terms, TrainingTerms), type(obj.terms).__name__
    with pytest.raises(TypeError, match="no GAN term"):
        gctm.terms.estimate(None, None, (torch.zeros(1, 2),), None, None, None, None)


def test_gan_on_a_gctm_preset_is_refused_in_one_line(tmp_path):
    p = tiny_preset("toy-translate", "gan.enabled=true")
    with pytest.raises(UserError) as info:
        train(p, "distill", tmp_path / "run", torch.device("cpu"))
    msg = str(info.value)
    assert "gan.enabled" in msg and "GCTM" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()  # refused before anything is written
