"""ctmtool.jobs.run_dirs: the one rule for finding a checkpoint, worded in the library's terms."""

from __future__ import annotations

import os
import time

import pytest

from ctmtool.errors import UserError
from ctmtool.jobs.run_dirs import default_run_dir, find_checkpoint, open_model
from tests.cli.conftest import tiny_checkpoint


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_rule_order(in_tmp):
    old = tiny_checkpoint(in_tmp / "runs/toy/ctm/a.safetensors")
    os.utime(old, (time.time() - 50, time.time() - 50))
    new = tiny_checkpoint(in_tmp / "runs/toy/ctm/b.safetensors")
    other = tiny_checkpoint(in_tmp / "elsewhere/c.safetensors")
    assert default_run_dir() == default_run_dir("toy", "ctm")
    assert find_checkpoint() == (new.relative_to(in_tmp), "newest in runs/toy/ctm, the default run directory")
    assert find_checkpoint(old) == (old, "given")
    assert find_checkpoint(run_dir="elsewhere")[0].name == other.name
    assert find_checkpoint("runs/toy/ctm", run_dir="elsewhere")[0].name == new.name  # ckpt wins


def test_errors_name_parameters_not_flags(in_tmp):
    with pytest.raises(UserError, match=r"`ckpt` FILE or `run_dir` DIR") as err:
        find_checkpoint()
    assert "--" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        find_checkpoint("nope.safetensors")
    with pytest.raises(UserError, match="`analytic` needs `preset`"):
        open_model(analytic=True)
    with pytest.raises(UserError, match="only used with `analytic`"):
        open_model("x", preset="toy")


def test_open_model_refuses_nan_weights(in_tmp):
    bad = tiny_checkpoint(in_tmp / "bad.safetensors", poison=True)
    with pytest.raises(UserError, match="NaN or infinite"):
        open_model(bad)
    model, source = open_model(tiny_checkpoint(in_tmp / "good.safetensors"))
    assert model.kind == "ctm" and source == f"checkpoint {in_tmp / 'good.safetensors'}"
