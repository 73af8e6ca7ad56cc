"""Issue 16 item 5: one rule for finding a checkpoint (ctmtool.jobs.run_dirs), the user's own examples as
written, options that do not apply refused, and the [sample] preset section as the defaults of `ctmtool
sample`."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import load_preset
from ctmtool.jobs.run_dirs import find_checkpoint
from tests.cli.conftest import one_error_line, tiny_checkpoint, toy_points


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _after_main_job(root):
    """runs/ as the README main job leaves it, plus newer checkpoints of other runs that must not be
    picked."""
    ctm = tiny_checkpoint(root / "runs/toy/ctm/ckpt-00000010.safetensors")
    old = time.time() - 100
    os.utime(ctm, (old, old))
    tiny_checkpoint(root / "runs/toy/teacher/ckpt-00000020.safetensors", kind="teacher")
    tiny_checkpoint(root / "runs/moons/ctm/ckpt-00000030.safetensors", preset="toy", seed=1)
    return ctm


def test_user_examples_work_as_written(in_tmp):
    ctm = _after_main_job(in_tmp)
    r = _run("sample", "--nfe", "1", "--gamma", "0", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert (f"using checkpoint runs/toy/ctm/{ctm.name} (newest in runs/toy/ctm, the default run directory)"
            in r.stderr)
    assert "nfe" in r.stdout and (in_tmp / "samples.npz").is_file()
    # its [sample] n
    assert np.load(in_tmp / "samples.npz")["samples"].shape == (load_preset("toy").sample.n, 2)
    toy_points(in_tmp / "data/points.npz")
    r = _run("likelihood", "data/", "--device", "cpu", "--n", "2", "--rtol", "1e-2", "--atol", "1e-2",
             "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"] == f"runs/toy/ctm/{ctm.name}"


def test_the_rule_never_looks_elsewhere(in_tmp):
    tiny_checkpoint(in_tmp / "runs/digits/ctm/ckpt-1.safetensors")
    line = one_error_line(_run("sample", "--out", "-"))
    assert "runs/toy/ctm" in line and "--ckpt" in line and "runs/digits/ctm" in line
    line = one_error_line(_run("likelihood", "x.npz"))  # the same rule, the same words
    assert "runs/toy/ctm" in line
    assert find_checkpoint(None, "runs/digits/ctm")[0].name == "ckpt-1.safetensors"
    assert find_checkpoint("runs/digits/ctm")[1] == "newest in runs/digits/ctm"


def test_run_dir_that_is_a_file(in_tmp):
    (in_tmp / "afile").write_text("x")
    for cmd in (["sample", "--out", "-"], ["likelihood", "x.npz"], ["sample", "sweep"]):
        assert "is a file" in one_error_line(_run(*cmd, "--run-dir", "afile"))
    for cmd in ("teacher", "distill"):
        assert "is a file" in one_error_line(_run(cmd, "--run-dir", "afile"))


@pytest.mark.parametrize("args,words", [
    (["--nfe", "1"], ["--nfe", "--steps", "heun"]),
    (["--gamma", "0.5"], ["--gamma", "deterministic"]),
    (["--class", "3"], ["--class", "unconditional"]),
])
def test_options_that_do_not_apply_to_a_teacher(in_tmp, args, words):
    teacher = tiny_checkpoint(in_tmp / "t.safetensors", kind="teacher")
    line = one_error_line(_run("sample", "--ckpt", teacher, *args, "--out", "-"))
    assert all(w in line for w in words), line


@pytest.mark.parametrize("args,words", [
    (["--preset", "toy"], ["--preset", "--analytic"]),
    (["--sigmas", "200,1"], ["--sigmas", "outside", "[0.002, 80]"]),
    (["--sigmas", "80,1", "--nfe", "2"], ["--nfe", "--sigmas", "not both"]),
    (["--steps", "4"], ["--steps", "--nfe"]),
    (["--n", "0"], ["--n", "at least 1"]),
    (["--batch", "0"], ["--batch"]),
    (["--n", str(10**12), "--no-limits"], ["--n", "GiB"]),  # past the limit, the memory estimate still
                                                            # refuses it
])
def test_sample_refusals(in_tmp, args, words):
    ctm = tiny_checkpoint(in_tmp / "c.safetensors")
    line = one_error_line(_run("sample", "--ckpt", ctm, *args, "--out", "-"))
    assert all(w in line for w in words), line


def test_resume_with_auto_resume_is_refused(in_tmp):
    for cmd in ("teacher", "distill"):
        assert "exclude each other" in one_error_line(_run(cmd, "--resume", "--auto-resume"))
    assert not (in_tmp / "runs").exists()


def test_sample_section_of_the_preset_is_the_default(in_tmp):
    ctm = tiny_checkpoint(in_tmp / "c.safetensors", overrides=["sample.nfe=3", "sample.n=5", "sample.seed=7",
                                                                 "sample.gamma=0.5"])
    r = _run("sample", "--ckpt", ctm, "--out", "s.npz", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["nfe"], res["n"], res["seed"], res["gamma"]) == (3, 5, 7, 0.5)
    r = _run("sample", "--ckpt", ctm, "--nfe", "1", "--n", "2", "--out", "-", "--json")
    assert r.exit_code == 0 and len(np.load(io.BytesIO(r.stdout_bytes))["samples"]) == 2  # given options win
    sig = tiny_checkpoint(in_tmp / "s.safetensors",
                          overrides=["sample.sigmas=[80.0, 1.0, 0.002]", "sample.n=2"])
    r = _run("sample", "--ckpt", sig, "--out", "s2.npz", "--json")
    assert json.loads(r.stdout)["schedule"] == [80.0, 1.0, 0.002]


def test_fid_takes_sampling_defaults_from_the_preset(in_tmp):
    from ctmtool.core.models import load_model
    from ctmtool.jobs.fid_run import sampling_settings

    model = load_model(tiny_checkpoint(in_tmp / "c.safetensors",
                                       overrides=["sample.nfe=2", "sample.gamma=0.3"]))
    assert sampling_settings(model) == {"solver": "gamma", "nfe": 2, "gamma": 0.3}
    assert sampling_settings(model, nfe=4)["nfe"] == 4
    teacher = load_model(tiny_checkpoint(in_tmp / "t.safetensors", kind="teacher",
                                         overrides=["sample.steps=5"]))
    assert sampling_settings(teacher) == {"solver": "heun", "steps": 5}
