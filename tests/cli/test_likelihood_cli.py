"""`ctmtool likelihood` from the command line: JSON keys, per-item files, checkpoints, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from ctmtool.cli.common import Group
from ctmtool.cli.likelihood import register
from ctmtool.config import load_preset
from ctmtool.core.models import analytic_model

KEYS = {"bits_per_dim", "nll_nats", "nll_per_dim", "n", "ci95", "method", "seconds_per_item", "bound", "dim"}


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The subcommand on its own app (the same registration as `ctmtool.cli.app`)."""
    app = typer.Typer(cls=Group, pretty_exceptions_enable=False)  # usage errors as one `error:` line

    @app.callback()
    def _root() -> None:
        """ctmtool (test)"""

    register(app)
    return app


def _run(app, *args: str):
    return CliRunner().invoke(app, ["likelihood", *args, "--device", "cpu"])


@pytest.fixture
def points(tmp_path):
    gmm = analytic_model(load_preset("toy")).net
    path = tmp_path / "points.npz"
    np.savez(path, samples=gmm.sample(12, torch.Generator().manual_seed(0)).numpy())
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, samples=rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8))
    return path


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr  # progress lines may come before it
    assert res.stdout == ""
    return errors[0]


def test_points_json_and_csv(app, points, tmp_path):
    out = tmp_path / "items.csv"
    res = _run(app, str(points), "--preset", "toy", "--analytic", "--json", "--per-item", str(out), "--batch",
               "5")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert KEYS <= set(r)
    assert r["n"] == 12 and r["dim"] == 2 and r["method"] == "ode" and r["divergence"] == "exact"
    assert r["bound"] is None and r["bits_per_dim"] == pytest.approx(r["nll_nats"] / (2 * np.log(2)))
    assert r["nll_per_dim"] == pytest.approx(r["nll_nats"] / 2)
    lo, hi = r["ci95"]["nll_nats"]
    assert lo < r["nll_nats"] < hi
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and set(rows[0]) == {"name", "nll", "bpd", "stderr"}
    assert np.mean([float(x["nll"]) for x in rows]) == pytest.approx(r["nll_nats"])
    again = _run(app, str(points), "--preset", "toy", "--analytic", "--per-item", str(out))
    assert "already exists" in _one_error_line(again)


def test_elbo_is_labelled_a_bound_and_jsonl(app, points, tmp_path):
    out = tmp_path / "items.jsonl"
    res = _run(app, str(points), "-p", "toy", "--analytic", "--method", "elbo", "--elbo-samples", "16", "--n",
               "4", "--json", "--per-item", str(out))
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["method"] == "elbo" and r["bound"] == "upper bound on NLL" and r["n"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(row["stderr"] > 0 for row in rows)


def test_images_from_a_checkpoint_with_hutchinson(app, images, tmp_path, make_checkpoint):
    ckpt = make_checkpoint(tmp_path / "teacher.safetensors", "teacher", (1, 8, 8))
    res = _run(app, str(images), "--ckpt", str(ckpt), "--probes", "2", "--probe-dist", "gaussian", "--rtol",
               "1e-2", "--atol", "1e-2", "--dequant-draws", "2", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["divergence"] == "hutchinson" and r["probes"] == 2 and r["dim"] == 64 and r["n"] == 5
    assert r["bound"].startswith("upper bound on discrete NLL")
    assert r["bits_per_dim"] == pytest.approx(r["nll_nats"] / (64 * np.log(2)))
    assert r["mean_item_stderr_nats"] > 0 and r["kind"] == "teacher"


def test_newest_checkpoint_of_run_dir_is_announced(app, points, tmp_path, make_checkpoint):
    run = tmp_path / "run"
    old = make_checkpoint(run / "a.safetensors", "teacher")
    new = make_checkpoint(run / "b.safetensors", "teacher")
    os.utime(old, (time.time() - 100, time.time() - 100))
    res = _run(app, str(points), "--run-dir", str(run), "--n", "2", "--rtol", "1e-2", "--atol", "1e-2",
               "--json")
    assert res.exit_code == 0, res.output
    assert f"using checkpoint {new}" in res.stderr.replace("\n", "")
    assert json.loads(res.stdout)["model"] == str(new)


def test_bad_inputs_give_one_line_errors(app, points, images, tmp_path, make_checkpoint):
    assert "missing DATA" in _one_error_line(_run(app, "--preset", "toy", "--analytic"))
    assert "does not exist" in _one_error_line(_run(app, str(tmp_path / "nope.npz"), "-p", "toy",
                                                    "--analytic"))
    gctm = make_checkpoint(tmp_path / "gctm.safetensors", "gctm")
    assert "GCTM" in _one_error_line(_run(app, str(points), "--ckpt", str(gctm)))
    for opt, val in (("--method", "exact"), ("--divergence", "trace"), ("--probe-dist", "uniform"),
                     ("--solver", "rk45"), ("--draw-average", "max"), ("--probes", "0"), ("--rtol", "-1")):
        line = _one_error_line(_run(app, str(points), "-p", "toy", "--analytic", opt, val))
        assert opt in line
    assert "--analytic needs --preset" in _one_error_line(_run(app, str(points), "--analytic"))
    assert "shape" in _one_error_line(_run(app, str(images), "-p", "toy", "--analytic"))
    assert "no checkpoint" in _one_error_line(_run(app, str(points), "--run-dir", str(tmp_path / "empty")))
    assert ".csv or .jsonl" in _one_error_line(_run(app, str(points), "-p", "toy", "--analytic", "--per-item",
                                                    str(tmp_path / "x.txt")))


def test_ctm_paper_protocol_from_the_command_line(app, images, tmp_path, make_checkpoint):
    """--protocol ctm-paper: the CTM paper's estimate (sony/ctm eval_bpd.py) of the same images, seeded; the
    exact protocol's figure is a different quantity (docs/likelihood.md)."""
    from ctmtool.core.likelihood_paper import ctm_paper_bpd
    from ctmtool.core.models import load_model

    ckpt = make_checkpoint(tmp_path / "ctm.safetensors", "ctm", (1, 8, 8))
    res = _run(app, str(images), "--ckpt", str(ckpt), "--protocol", "ctm-paper", "--seed", "3", "--batch",
               "5", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["protocol"] == "ctm-paper" and r["n"] == 5 and r["dim"] == 64 and r["nfe"] > 0
    m = load_model(ckpt)
    x = torch.from_numpy(np.load(images)["samples"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    want, _ = ctm_paper_bpd(m.net.denoise, x, torch.Generator().manual_seed(3))
    assert r["bits_per_dim"] == pytest.approx(float(want.mean()), rel=1e-6)
    err = _one_error_line(_run(app, str(images), "--ckpt", str(ckpt), "--protocol", "paper"))
    assert "--protocol" in err
