"""The jobs layer checks a user's settings once and says what is wrong as a UserError; the maths below it
raises plain ValueErrors for the same values (issue 23: core trusts its inputs). Here for zero-shot
restoration (`plan_restoration`), translation and editing (`plan_translation`, `plan_editing`), likelihoods
(`check_density`), the analytic model and run directories (`analytic_preset`, `checkpoint_file`), and through
the command line: one `error:` line, exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import load_preset
from ctmtool.core.editing import edit_schedule
from ctmtool.core.likelihood import model_denoiser
from ctmtool.core.models import analytic_model, load_model
from ctmtool.core.sampling import SamplingPlan
from ctmtool.core.zero_shot import check_task, restore
from ctmtool.errors import UserError
from ctmtool.jobs.likelihood import check_density
from ctmtool.jobs.plan import plan_editing, plan_restoration, plan_translation
from ctmtool.jobs.run_dirs import analytic_preset, checkpoint_file
from ctmtool.metrics.quality import make_scorer
from ctmtool.train.run import resolve_teacher
from tests.cli.conftest import one_error_line, tiny_checkpoint, toy_points

GREY, RGB = (1, 8, 8), (3, 8, 8)


def _maths_error(fn, *args, **kwargs) -> str:
    """The message of the plain ValueError (not a UserError) that `fn` raises."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert not isinstance(info.value, UserError)
    return str(info.value)


def _user_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)  # `except ValueError` catches either layer's refusal


@pytest.mark.parametrize("shape, task, factor, words", [
    ((2,), "inpaint", 8, "zero-shot restoration is for image models"),
    (GREY, "colorize", 8, "colourisation needs an RGB model, this one makes 1-channel images"),
    (RGB, "superres", 3, "super-resolution factor 3 must be at least 2 and divide the image size 8x8"),
    (RGB, "superres", 1, "super-resolution factor 1 must be at least 2"),
])
def test_restoration_task_refused_once_by_the_plan_in_the_words_of_the_maths(make_model, tiny_preset, shape,
                                                                          task, factor, words):
    model = make_model("ctm", shape, tiny_preset("digits", net="unet") if len(shape) == 3 else None)
    assert words in _maths_error(check_task, task, tuple(model.data_shape), factor)
    level = model.net.strength_level(1.0)
    assert words in _user_error(plan_restoration, model, level, task, factor=factor)


def test_restoration_plan_is_the_edit_schedule_and_checks_its_settings(make_model, tiny_preset):
    model = make_model("ctm", RGB, tiny_preset("digits", net="unet"))
    level = model.net.strength_level(0.7)
    plan = plan_restoration(model, level, "superres", factor=4, nfe=3, gamma=0.5, batch=5)
    assert torch.equal(plan.schedule, edit_schedule(model, level, 3))
    assert (plan.solver, plan.gamma, plan.batch) == ("gamma", 0.5, 5)

    def refused(task="inpaint", **settings):
        return _user_error(plan_restoration, model, level, task, **settings)

    assert refused(nfe=0) == "`nfe` must be at least 1 (got 0)"
    assert refused(batch=0) == "`batch` must be at least 1 (got 0)"
    assert refused(gamma=1.5) == "`gamma` must be in [0, 1], got 1.5"
    assert refused("deblur").startswith("`restore` deblur: choose among")
    teacher = make_model("teacher", RGB, tiny_preset("digits", net="unet"))
    assert "editing needs a CTM or a GCTM" in _user_error(plan_restoration, teacher, 1.0, "inpaint")
    # the maths trusts the plan: an inpainting without a hole is a caller's mistake
    y = torch.zeros(1, *RGB)
    assert "needs a hole" in _maths_error(restore, model, y, "inpaint", plan, lambda: torch.zeros(1, *RGB))


def test_translation_and_editing_plans_word_counts_as_the_command_line_did(make_model, tiny_preset):
    gctm = make_model("gctm", (2,), tiny_preset("toy-translate"))
    assert _user_error(plan_translation, gctm, nfe=0) == "`nfe` must be at least 1 (got 0)"
    assert _user_error(plan_translation, gctm, batch=0) == "`batch` must be at least 1 (got 0)"
    ctm = make_model("ctm", (2,))
    level = ctm.net.strength_level(0.5)
    assert _user_error(plan_editing, ctm, level, nfe=0) == "`nfe` must be at least 1 (got 0)"
    assert isinstance(plan_editing(ctm, level, nfe=2), SamplingPlan)


def test_likelihood_analytic_and_run_directory_refused_by_jobs_not_by_the_maths(make_model, tiny_preset,
                                                                                tmp_path):
    gctm = make_model("gctm", (2,), tiny_preset("toy-translate"))
    assert "no data density" in _maths_error(model_denoiser, gctm)
    assert _user_error(check_density, gctm).startswith("a GCTM transports one distribution to another")
    check_density(make_model("ctm", (2,)))  # a CTM has a density: nothing refused
    digits = load_preset("digits")
    assert _maths_error(analytic_model, digits) == _user_error(analytic_preset, digits)
    assert analytic_preset(load_preset("toy")).name == "toy"
    problem = _maths_error(analytic_model, digits)
    assert _user_error(make_scorer, "logp", digits) == problem  # `sample sweep --metric logp`
    analytic_digits = load_preset("digits", ["ctm.teacher=analytic"])
    assert _user_error(resolve_teacher, analytic_digits, None, "cpu") == problem
    (tmp_path / "empty").mkdir()
    assert _maths_error(load_model, tmp_path / "empty") == _user_error(checkpoint_file, tmp_path / "empty")
    ckpt = tiny_checkpoint(tmp_path / "run" / "c.safetensors")
    assert checkpoint_file(tmp_path / "run") == ckpt and checkpoint_file(ckpt) == ckpt


def _cli(args) -> str:
    return one_error_line(CliRunner().invoke(app, args, env={"COLUMNS": "200"}))


def test_the_command_line_says_each_refusal_in_one_line(tmp_path, monkeypatch, make_checkpoint, tiny_preset):
    monkeypatch.chdir(tmp_path)
    grey = make_checkpoint(tmp_path / "grey.safetensors", "ctm", GREY, tiny_preset("digits", net="unet"))
    np.savez(tmp_path / "img.npz", samples=np.zeros((2, 8, 8, 1), np.uint8))
    edit = ["translate", "edit", "img.npz", "--ckpt", str(grey), "--out", "o.npz", "--device", "cpu"]
    assert _cli([*edit, "--restore", "colorize"]) == (
        "error: colourisation needs an RGB model, this one makes 1-channel images")
    assert _cli([*edit, "--restore", "superres", "--factor", "3"]) == (
        "error: super-resolution factor 3 must be at least 2 and divide the image size 8x8")
    assert _cli([*edit, "--restore", "inpaint", "--nfe", "0"]) == "error: --nfe must be at least 1 (got 0)"
    assert _cli([*edit, "--restore", "inpaint", "--batch", "0"]) == (
        "error: --batch must be at least 1 (got 0)")
    assert _cli([*edit, "--nfe", "0"]) == "error: --nfe must be at least 1 (got 0)"
    gctm = tiny_checkpoint(tmp_path / "g.safetensors", kind="gctm", preset="toy-translate")
    toy_points(tmp_path / "p.npz")
    tr = ["translate", "p.npz", "--ckpt", str(gctm), "--out", "o.npz"]
    assert _cli([*tr, "--nfe", "0"]) == "error: --nfe must be at least 1 (got 0)"
    assert _cli([*tr, "--batch", "0"]) == "error: --batch must be at least 1 (got 0)"
    points_ctm = tiny_checkpoint(tmp_path / "c.safetensors")  # before: a traceback (a 2-D centre hole)
    assert _cli(["translate", "edit", "p.npz", "--ckpt", str(points_ctm), "--out", "o.npz", "--restore",
                 "inpaint"]) == "error: zero-shot restoration is for image models"
    assert _cli(["likelihood", "p.npz", "--ckpt", str(gctm), "--device", "cpu"]).startswith(
        "error: a GCTM transports one distribution to another and defines no data density")
    (tmp_path / "empty").mkdir()
    assert _cli(["distill", "--preset", "toy", "--teacher", "empty", "--run-dir", "r"]) == (
        "error: no checkpoint (*.safetensors) in empty; pass --ckpt or a --run-dir with a finished run")
    assert not (tmp_path / "o.npz").exists()
