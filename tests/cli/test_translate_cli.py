"""`ctmtool translate` and `ctmtool translate edit`: a tiny GCTM trained end to end, then used from the
CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.app import app
from ctmtool.cli.common import Reporter
from ctmtool.data import toy_points

ENV = {"COLUMNS": "200"}
TINY_RUN = ("gctm.grid=6", "gctm.max_steps=3", "distill.batch=64", "distill.kimg=0.192")
IMG = (1, 8, 8)


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _error(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_preset):
    """toy-translate (moons -> 8 Gaussians, OT coupling), 3 optimiser steps of a tiny MLP through train."""
    from ctmtool.train.run import train

    root = tmp_path_factory.mktemp("gctm")
    preset = tiny_preset("toy-translate", *TINY_RUN)
    res = train(preset, "distill", root / "run", torch.device("cpu"), Reporter(quiet=True))
    points = root / "moons.npz"
    np.savez(points, samples=toy_points("moons", 300, 99).values.numpy())
    return res, points


@pytest.fixture
def image_gctm(tmp_path, make_checkpoint, tiny_preset):
    """An untrained GCTM on 1x8x8 images for a given coupling, with random weights."""
    def build(coupling: str):
        preset = tiny_preset("toy-translate", f'gctm.coupling="{coupling}"')
        meta = {"moments": {"var0": 0.3, "var1": 0.3, "cov01": 0.2}}
        return make_checkpoint(tmp_path / f"gctm-{coupling.replace(':', '_')}.safetensors", "gctm", IMG,
                               preset, meta, scale=0.1)

    return build


@pytest.fixture
def ctm_ckpt(tmp_path, make_checkpoint):
    """An untrained CTM (images by default), with random weights."""
    def build(shape=IMG):
        return make_checkpoint(tmp_path / f"ctm{len(shape)}.safetensors", "ctm", shape, scale=0.1)

    return build


def _images(folder, n=3, size=8, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_train_gctm_writes_a_gctm_checkpoint_with_moments(trained):
    res, _ = trained
    assert res.steps == 3 and res.checkpoint.is_file()
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt.kind == "gctm" and ckpt.data_shape == (2,)
    m = ckpt.meta["moments"]
    assert set(m) == {"var0", "var1", "cov01", "label_range"}
    assert m["label_range"] == [ckpt.preset.diffusion.sigma_min, ckpt.preset.diffusion.sigma_max]
    assert m["var0"] == pytest.approx(0.2475, rel=0.1) and m["cov01"] > 0.1  # OT pairs correlate x0 and x1
    assert ckpt.meta["grid"][0] == 1.0 and ckpt.meta["grid"][-1] == 0.0
    assert (res.checkpoint.parent / f"samples-{res.steps:08d}.png").is_file()


def test_translate_points_json_grid_and_determinism(trained, tmp_path):
    res, points = trained
    r = _run("translate", points, "--ckpt", res.checkpoint, "--out", tmp_path / "a.npz", "--grid",
             tmp_path / "g.png", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n"] == 300 and info["nfe"] == 1 and info["coupling"] == "toy-ot:moons" and info["grid"]
    with np.load(tmp_path / "a.npz") as z:
        a, inputs = z["samples"], z["inputs"]
    assert a.shape == (300, 2) and np.isfinite(a).all()
    assert np.allclose(inputs, np.load(points)["samples"])
    r = _run("translate", points, "--ckpt", res.checkpoint.parent, "--out", tmp_path / "b.npz", "--batch",
             "7", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert np.allclose(np.load(tmp_path / "b.npz")["samples"], a, atol=1e-5)  # BLAS blocking differs by batch
    r = _run("translate", points, "--ckpt", res.checkpoint, "--out", tmp_path / "c.npz", "--nfe", "2",
             "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert np.load(tmp_path / "c.npz")["samples"].shape == (300, 2)
    assert _run("translate", points, "--ckpt", res.checkpoint, "--out", tmp_path / "s.png", "--device",
                "cpu").exit_code == 0
    assert Image.open(tmp_path / "s.png").size[0] > 100


def test_translate_errors(trained, tmp_path, ctm_ckpt):
    res, points = trained
    assert "does not exist" in _error(_run("translate", tmp_path / "nope.npz", "--ckpt", res.checkpoint,
                                           "--out", tmp_path / "o.npz"))
    msg = _error(_run("translate", points, "--ckpt", ctm_ckpt((2,)), "--out", tmp_path / "o.npz"))
    assert "GCTM" in msg and "translate edit" in msg
    (tmp_path / "taken.npz").write_bytes(b"x")
    assert "--force" in _error(_run("translate", points, "--ckpt", res.checkpoint, "--out",
                                    tmp_path / "taken.npz"))
    assert _run("translate", points, "--ckpt", res.checkpoint, "--out", tmp_path / "taken.npz", "--force",
                "--device", "cpu").exit_code == 0
    assert "folder of PNGs" in _error(_run("translate", points, "--ckpt", res.checkpoint, "--out",
                                           tmp_path / "dir"))
    assert "corrupt" in _error(_run("translate", points, "--ckpt", res.checkpoint, "--out",
                                    tmp_path / "d.npz", "--degrade"))
    assert "gamma" in _error(_run("translate", points, "--ckpt", res.checkpoint, "--out", tmp_path / "e.npz",
                                  "--nfe", "2", "--gamma", "0.5", "--device", "cpu"))
    assert "No such option: --strokes" in _error(_run("translate", points, "--ckpt", res.checkpoint, "--out",
                                                      # edit's option
                                                      tmp_path / "f.npz", "--strokes", points))


def test_translate_images_with_degrade_named_outputs_and_grid(tmp_path, image_gctm):
    ckpt = image_gctm("corrupt:sr2")
    src = _images(tmp_path / "in")
    r = _run("translate", src, "--ckpt", ckpt, "--out", tmp_path / "out", "--degrade", "--grid",
             tmp_path / "g.png", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert Image.open(tmp_path / "out" / "img0.png").size == (8, 8)
    w, h = Image.open(tmp_path / "g.png").size
    assert w > 3 * 8 and h >= 8  # clean | degraded | output per item
    r = _run("translate", src / "img1.png", "--ckpt", ckpt, "--out", tmp_path / "one.png", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "one image" in _error(_run("translate", src, "--ckpt", ckpt, "--out", tmp_path / "many.png"))


def test_translate_splits_side_by_side_pairs(tmp_path, image_gctm):
    ckpt = image_gctm("paired")
    src = _images(tmp_path / "pairs", n=2, size=8)
    for p in src.iterdir():  # make 8x16 side-by-side files
        a = np.asarray(Image.open(p))
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(p)
    r = _run("translate", src, "--ckpt", ckpt, "--out", tmp_path / "o.npz", "--grid", tmp_path / "g.png",
             "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert np.load(tmp_path / "o.npz")["samples"].shape == (2, 8, 8, 1)


def test_edit_with_a_ctm_plain_and_with_strokes(tmp_path, ctm_ckpt):
    ckpt = ctm_ckpt()
    src = _images(tmp_path / "in", n=2)
    r = _run("translate", "edit", src / "img0.png", "--ckpt", ckpt, "--strength", "0.3", "--out",
             tmp_path / "e.png", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["kind"] == "ctm" and info["level_unit"] == "sigma"
            and info["level"] == pytest.approx(0.3 / 0.7, abs=1e-6))
    assert Image.open(tmp_path / "e.png").size == (8, 8)
    strokes = np.asarray(Image.open(src / "img0.png")).copy()
    strokes[2:5, 2:5] = 255
    Image.fromarray(strokes).save(tmp_path / "strokes.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[1:6, 1:6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    r = _run("translate", "edit", src / "img0.png", "--ckpt", ckpt, "--strokes", tmp_path / "strokes.png",
             "--mask", tmp_path / "mask.png", "--keep-unmasked", "--out", tmp_path / "s.npz", "--grid",
             tmp_path / "sg.png", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    out = np.load(tmp_path / "s.npz")["samples"][0, ..., 0]
    original = np.asarray(Image.open(src / "img0.png"))
    assert np.array_equal(out[mask == 0], original[mask == 0])


def test_edit_errors(trained, tmp_path, ctm_ckpt, image_gctm):
    res, points = trained
    src = _images(tmp_path / "in", n=1)
    assert "SDEdit" in _error(_run("translate", "edit", points, "--ckpt", res.checkpoint, "--out",
                                   tmp_path / "o.npz"))
    assert "Missing argument 'IMAGE'" in _error(_run("translate", "edit", "--ckpt", res.checkpoint, "--out",
                                                     tmp_path / "o.npz"))
    ctm = ctm_ckpt()
    assert "--strokes" in _error(_run("translate", "edit", src, "--ckpt", ctm, "--mask", src / "img0.png",
                                      "--out", tmp_path / "o.npz"))
    assert "strength" in _error(_run("translate", "edit", src, "--ckpt", ctm, "--strength", "1.5",
                                     "--out", tmp_path / "o.npz"))
    r = _run("translate", "edit", src, "--ckpt", image_gctm("independent"), "--out", tmp_path / "g.npz",
             "--nfe", "2", "--gamma", "0.5", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
