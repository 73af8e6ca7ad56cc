"""`ctmtool export`: a teacher's denoiser exported and verified from the command line; bad inputs refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.jobs.export import random_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
SMALL = ["net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16"]


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_export_teacher_json(tmp_path):
    ck = random_checkpoint(tmp_path / "t.safetensors", "toy", "teacher", overrides=SMALL)
    r = _run("export", "--ckpt", ck, "--out", tmp_path / "d.onnx", "--no-program", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["graphs"][0]["graph"] == "denoiser" and out["graphs"][0]["max_abs_diff_ort"] <= 1e-4
    assert ((tmp_path / "d.onnx").exists() and (tmp_path / "d.json").exists()
            and not (tmp_path / "d.pt2").exists())
    again = _run("export", "--ckpt", ck, "--out", tmp_path / "d.onnx")
    assert again.exit_code == 2 and "already exist" in again.output and "--force" in again.output


def test_export_bad_inputs(tmp_path):
    r = _run("export", "--ckpt", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 2 and r.output.startswith("error:")
    ck = random_checkpoint(tmp_path / "c.safetensors", "toy", "ctm", overrides=SMALL)
    r = _run("export", "--ckpt", ck, "--out", tmp_path / "m.onnx", "--tol", "0")
    assert r.exit_code == 2 and "--tol must be positive" in r.output
