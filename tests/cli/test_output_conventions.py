"""Output conventions (ctmtool/cli/common.py): help for every command, results on stdout, one `error: ...`
line on stderr with exit code 2, no overwriting without --force; exercised through `ctmtool sample`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ctmtool import __version__
from ctmtool.cli.app import app

ENV = {"COLUMNS": "200"}
ANALYTIC = ["sample", "--analytic", "--preset", "toy", "--solver", "heun", "--steps", "4", "--n", "16",
            "--device", "cpu"]

COMMANDS = {
    (): ["presets", "teacher", "distill", "sample", "likelihood", "fid", "translate"],
    ("presets",): ["--set", "--json"],
    ("teacher",): ["--preset", "--data", "--run-dir", "--kimg", "--minutes", "--resume", "--set", "--device",
                   "--force", "--json", "import"],
    ("teacher", "import"): ["--out", "--force", "--json"],
    ("distill",): ["--preset", "--teacher", "--data", "--run-dir", "--kimg", "--minutes", "--resume", "--set",
                   "--device", "--force", "--json"],
    ("sample",): ["--ckpt", "--run-dir", "--nfe", "--gamma", "--sigmas", "--solver", "--steps", "--n",
                  "--batch", "--seed", "--class", "--ema", "--analytic", "--preset", "--out", "--device",
                  "--force", "--json"],
    ("likelihood",): ["--ckpt", "--analytic", "--preset", "--json"],
    ("fid",): ["--json"],
    ("translate",): ["--ckpt", "--out", "--nfe", "--gamma", "--degrade", "--json"],
    ("sample", "sweep"): ["--ckpt", "--nfe", "--gamma", "--metric", "--out", "--json"],
}


def _run(*args):
    return CliRunner().invoke(app, list(args), env=ENV)


def _single_error_line(r, only: bool = True) -> str:
    """Exit code 2, nothing on stdout, one `error: ...` line on stderr (`only`: and nothing else there)."""
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr
    if only:
        assert len(lines) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("cmd", list(COMMANDS), ids=lambda c: " ".join(c) or "ctmtool")
def test_help(cmd):
    for flag in ("--help", "-h"):
        r = _run(*cmd, flag)
        assert r.exit_code == 0, r.stderr
        assert "Usage" in r.stdout
        for opt in COMMANDS[cmd]:
            assert opt in r.stdout, (cmd, opt)


@pytest.mark.parametrize("cmd,phrase", [
    (("sample",), "heun otherwise"),
    (("sample",), "default: runs/toy/ctm"),
    (("sample",), "random per image"),
    (("teacher",), "runs/<preset>/teacher"),
    (("distill",), "runs/<preset>/ctm"),
    (("teacher", "import"), "beside it"),
    (("likelihood",), "[data.gmm]"),
])
def test_help_keeps_bracketed_text(cmd, phrase):
    r = _run(*cmd, "--help")
    assert phrase in " ".join(r.stdout.split())


def test_no_args_shows_help_and_version():
    r = _run()
    assert "Usage" in r.stdout + r.stderr
    r = _run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"ctmtool {__version__}"


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "ctmtool", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"ctmtool {__version__}"


# --------------------------------------------------------------------------------------------------
# sample: outputs


def test_sample_npz_json(tmp_path):
    out = tmp_path / "x.npz"
    r = _run(*ANALYTIC, "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)  # stdout holds the JSON result only
    assert res["out"] == str(out) and res["n"] == 16 and res["solver"] == "heun"
    assert res["nfe"] == 7  # 4 Karras levels then 0: 2 * 4 - 1 Heun evaluations
    assert res["schedule"][0] == 2.0 and res["schedule"][-1] == 0.0 and len(res["schedule"]) == 5
    with np.load(out) as z:
        assert list(z.keys()) == ["samples"]
        s = z["samples"]
    assert s.dtype == np.float32 and s.shape == (16, 2) and np.isfinite(s).all()


def test_sample_refuses_overwrite_then_force(tmp_path):
    out = tmp_path / "x.npz"
    assert _run(*ANALYTIC, "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    line = _single_error_line(_run(*ANALYTIC, "--seed", "5", "--out", str(out)))
    assert str(out) in line and "--force" in line
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    r = _run(*ANALYTIC, "--seed", "5", "--out", str(out), "--force")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temporary files left


def test_sample_png(tmp_path):
    out = tmp_path / "grid.png"
    r = _run(*ANALYTIC, "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 16 and im.height > 16
    assert json.loads(r.stdout)["format"] == "png"
    assert _run(*ANALYTIC, "--out", str(out)).exit_code == 2


def _npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return dict(z)


def test_sample_stdout_is_npz_bytes(tmp_path):
    """`--out -` writes the bytes of the .npz it would write to a file: typed (dtype, shape), nothing else."""
    r = _run(*ANALYTIC, "--out", "-", "--json")
    assert r.exit_code == 0, r.stderr
    arrays = _npz(r.stdout_bytes)
    assert arrays["samples"].shape == (16, 2) and arrays["samples"].dtype == np.float32
    summary = json.loads(r.stderr.strip().splitlines()[-1])  # --json: one JSON line on stderr
    assert summary["out"] == "-" and summary["n"] == 16
    out = tmp_path / "x.npz"
    assert _run(*ANALYTIC, "--out", str(out)).exit_code == 0
    assert np.array_equal(np.load(out)["samples"], arrays["samples"])


def test_sample_stdout_via_subprocess(tmp_path):
    """stdout holds exactly the samples; progress and the summary go to stderr."""
    r = subprocess.run([sys.executable, "-m", "ctmtool", *ANALYTIC, "--n", "4", "--out", "-"],
                       capture_output=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _npz(r.stdout)["samples"].shape == (4, 2)
    assert b"out\t-" in r.stderr  # the summary as a plain table on stderr


def test_sample_output_refusals(tmp_path):
    line = _single_error_line(_run(*ANALYTIC, "--out", str(tmp_path / "x.txt")), only=False)
    assert ".npz" in line and ".png" in line
    line = _single_error_line(_run(*ANALYTIC, "--out", str(tmp_path / "folder")), only=False)
    assert "folder" in line and ".npz" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.txt", "folder"])
def test_sample_output_refused_before_sampling(tmp_path, name):
    _single_error_line(_run(*ANALYTIC, "--out", str(tmp_path / name)), only=True)


def test_sample_analytic_needs_preset():
    line = _single_error_line(_run("sample", "--analytic", "--n", "2", "--out", "-"))
    assert "--preset" in line


# --------------------------------------------------------------------------------------------------
# sample: gamma-sampling and its refusals


@pytest.fixture(scope="module")
def ctm_ckpt(tmp_path_factory, make_checkpoint):
    """A small, untrained CTM on the toy preset, with random weights."""
    return make_checkpoint(tmp_path_factory.mktemp("ctm") / "ctm.safetensors", "ctm", scale=0.1)


def test_sample_ctm_gamma(tmp_path, ctm_ckpt):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    base = ["sample", "--ckpt", str(ctm_ckpt), "--nfe", "3", "--gamma", "0.5", "--n", "7", "--device", "cpu"]
    r = _run(*base, "--batch", "7", "--out", str(a), "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["solver"] == "gamma" and res["nfe"] == 3 and res["gamma"] == 0.5
    assert res["schedule"] == pytest.approx([80.0, 9.723201, 0.469979, 0.002], rel=1e-5)
    assert res["checkpoint"] == str(ctm_ckpt)
    assert _run(*base, "--batch", "3", "--out", str(b)).exit_code == 0
    assert np.allclose(np.load(a)["samples"], np.load(b)["samples"], atol=1e-6)  # per-image seeds


def test_sample_ctm_explicit_sigmas(ctm_ckpt):
    r = _run("sample", "--ckpt", str(ctm_ckpt), "--sigmas", "80,2.515,0.002", "--n", "2", "--out", "-")
    assert r.exit_code == 0, r.stderr
    assert len(_npz(r.stdout_bytes)["samples"]) == 2


@pytest.mark.parametrize("gamma", ["2", "-0.5"])
def test_sample_gamma_out_of_range(ctm_ckpt, gamma):
    line = _single_error_line(_run("sample", "--ckpt", str(ctm_ckpt), "--nfe", "2", "--gamma", gamma,
                                   "--n", "2", "--out", "-"))
    assert "gamma" in line and "[0, 1]" in line


def test_sample_gamma_for_a_teacher_is_refused_as_inapplicable():
    """A teacher is solved by Heun: any --gamma (even an out-of-range one) is refused as not applying to
    it."""
    assert "--gamma applies to gamma-sampling" in _single_error_line(_run(*ANALYTIC, "--gamma", "2", "--out",
                                                                          "-"))


def test_sample_gamma_out_of_range_ctm(ctm_ckpt):
    line = _single_error_line(_run("sample", "--ckpt", str(ctm_ckpt), "--gamma", "2", "--out", "-"))
    assert "--gamma must be in [0, 1]" in line


def test_sample_bad_schedules(ctm_ckpt):
    line = _single_error_line(_run("sample", "--ckpt", str(ctm_ckpt), "--sigmas", "0.002,80", "--out", "-"))
    assert "--sigmas" in line and "decrease" in line
    line = _single_error_line(_run("sample", "--ckpt", str(ctm_ckpt), "--sigmas", "80,abc", "--out", "-"))
    assert "--sigmas" in line and "comma-separated" in line
    line = _single_error_line(_run("sample", "--ckpt", str(ctm_ckpt), "--nfe", "0", "--out", "-"))
    assert "--nfe" in line
    line = _single_error_line(_run(*ANALYTIC, "--n", "0", "--out", "-"))
    assert "--n" in line


def test_gamma_sampling_an_analytic_teacher_is_refused():
    r = _run("sample", "--analytic", "--preset", "toy", "--solver", "gamma", "--n", "2", "--out", "-")
    line = _single_error_line(r)
    assert "gamma" in line and "--solver heun" in line and "ctmtool distill" in line


def test_missing_checkpoint(tmp_path):
    line = _single_error_line(_run("sample", "--ckpt", str(tmp_path / "none.safetensors"), "--out", "-"))
    assert "does not exist" in line


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 20)
    line = _single_error_line(_run("sample", "--ckpt", str(bad), "--out", "-"))
    assert str(bad) in line
