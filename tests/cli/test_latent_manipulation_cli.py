"""Latent manipulation through the CLI, as users run it: the digits-latent preset (coupling `latent`) trained
for two steps, its checkpoint carrying the class Gaussians of the training data, then `translate edit
--to-class` on folders of digits; the one-line refusals (unlabelled training data, inputs without classes,
models without class sources, options of other edits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.core.models import load_model
from ctmtool.data.digits import load_digits
from ctmtool.gctm.couplings import class_statistics
from tests.cli.conftest import one_error_line, tiny_checkpoint

TINY = ["net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16", "distill.batch=64", "gctm.grid=4",
        "gctm.max_steps=2", "distill.compile=false"]


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sets(*pairs):
    return [a for p in pairs for a in ("--set", p)]


def _digits(root, classes=(3, 7), per_class=3, sub_folders=True):
    """Held-out digits written as PNGs, in class sub-folders named by digit (or all in `root`)."""
    ds = load_digits("test")
    for c in classes:
        folder = root / str(c) if sub_folders else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in (ds.labels == c).nonzero().flatten()[:per_class].tolist():
            Image.fromarray(ds.values[i, 0].numpy()).save(folder / f"{c}-{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    r = _run("distill", "--preset", "digits-latent", "--run-dir", root / "run", "--kimg", "0.128",
             "--device", "cpu", "--json", *_sets(*TINY))
    assert r.exit_code == 0, r.stderr
    return root, json.loads(r.stdout)["checkpoint"]


def test_checkpoint_carries_the_class_gaussians_of_the_training_data(trained):
    _, ckpt = trained
    model = load_model(ckpt)
    ds = load_digits("train")
    means, stds = class_statistics(*ds.get(torch.arange(len(ds))), 10)
    assert model.net.source_classes == 10 and model.meta["class_source"] == [10, 1, 8, 8]
    assert torch.equal(model.net.source_means, means) and torch.equal(model.net.source_stds, stds)
    assert not model.net.gaussian_source  # not N(0, I): no generation from noise, no SDEdit, no gamma


def test_to_class_moves_every_input_and_writes_outputs_and_grid(trained, tmp_path):
    root, ckpt = trained
    src = _digits(tmp_path / "in")
    r = _run("translate", "edit", src, "--ckpt", ckpt, "--to-class", 1, "-o", tmp_path / "out",
             "--grid", tmp_path / "grid.png", "--encode-steps", 4, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 6 and res["to_class"] == 1 and res["moved_items"] == 6 and res["encode_nfe"] == 9
    assert res["from_class"] == "from the inputs" and res["latent_shift"] > 0 and res["round_trip_rmse"] >= 0
    assert len(list((tmp_path / "out").iterdir())) == 6 and (tmp_path / "grid.png").stat().st_size > 0
    # sub-folders named 3/ and 7/ are classes 3 and 7: moving to 7 leaves the 7s where they are
    r = _run("translate", "edit", src, "--ckpt", ckpt, "--to-class", 7, "-o", tmp_path / "o7",
             "--encode-steps", 2, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["moved_items"] == 3


def test_moving_to_the_own_class_is_the_round_trip(trained, tmp_path):
    """A latent moved to its own class is unchanged: the output is the round trip encode -> decode."""
    _, ckpt = trained
    src = _digits(tmp_path / "flat", classes=(5,), sub_folders=False)
    out = tmp_path / "same.npz"
    r = _run("translate", "edit", src, "--ckpt", ckpt, "--to-class", 5, "--from-class", 5, "-o", out,
             "--encode-steps", 3, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["moved_items"] == 0 and res["latent_shift"] == 0
    z = np.load(out)
    y, x = (z[k].astype(np.float64) / 127.5 - 1 for k in ("samples", "inputs"))
    assert y.shape == x.shape == (3, 8, 8, 1) or y.shape == x.shape == (3, 1, 8, 8)
    rmse = np.sqrt(((y - x) ** 2).reshape(len(y), -1).mean(1)).mean()
    assert rmse == pytest.approx(res["round_trip_rmse"], abs=0.01)  # output = the unmoved latent decoded


def test_refusals_are_one_line(trained, tmp_path):
    root, ckpt = trained
    flat = _digits(tmp_path / "flat", sub_folders=False)
    line = one_error_line(_run("translate", "edit", flat, "--ckpt", ckpt, "--to-class", 1,
                               "-o", tmp_path / "o1", "--device", "cpu"))
    assert "--from-class" in line and "sub-folders" in line
    line = one_error_line(_run("translate", "edit", flat, "--ckpt", ckpt, "--to-class", 10,
                               "-o", tmp_path / "o2", "--device", "cpu"))
    assert "0..9" in line
    line = one_error_line(_run("translate", "edit", flat, "--ckpt", ckpt, "--to-class", 1, "--strength", 0.5,
                               "-o", tmp_path / "o3", "--device", "cpu"))
    assert "--strength" in line
    line = one_error_line(_run("translate", flat, "--ckpt", ckpt, "--class", 1, "-o", tmp_path / "o5",
                               "--device", "cpu"))
    assert "--to-class" in line and "source" in line
    line = one_error_line(_run("translate", "edit", flat, "--ckpt", ckpt, "--from-class", 1,
                               "-o", tmp_path / "o4", "--device", "cpu"))
    assert "--to-class" in line
    # a GCTM without a class source (toy-translate), and a CTM
    for kind, preset in (("gctm", "toy-translate"), ("ctm", "toy")):
        other = tiny_checkpoint(tmp_path / f"{kind}.safetensors", kind, preset)
        pts = tmp_path / "pts.npz"
        np.savez(pts, samples=np.zeros((2, 2), np.float32), labels=np.array([0, 1]))
        line = one_error_line(_run("translate", "edit", pts, "--ckpt", other, "--to-class", 1, "-o",
                                   tmp_path / f"{kind}.npz", "--device", "cpu"))
        assert "coupling 'latent'" in line
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o4", "o5", "gctm.npz", "ctm.npz"))


def test_training_on_unlabelled_data_is_refused_in_one_line(tmp_path):
    flat = _digits(tmp_path / "flat", sub_folders=False)
    line = one_error_line(_run("distill", "--preset", "digits-latent", "--data", flat, "--run-dir",
                               tmp_path / "run", "--kimg", "0.064", "--device", "cpu",
                               *_sets(*TINY, "data.source=folder")))
    assert "no labels" in line and "latent" in line
