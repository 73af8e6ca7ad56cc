"""GCTM between two image data sets through the CLI: the image-translate preset, shrunk, trained for a few
steps on two folders the test makes (source A: dark images, target B: bright ones), then `translate` of a
folder; couplings dataset and dataset-ot on images; errors for a missing or mismatched [gctm.source]."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import load_preset
from ctmtool.gctm.couplings import make_coupling
from ctmtool.gctm.source_data import load_source
from tests.cli.conftest import one_error_line

TINY = ["net.unet.model_channels=16", "net.unet.channel_mult=[1]", "net.unet.num_blocks=1",
        "net.unet.attn_resolutions=[]", "net.unet.dropout=0.0", "data.resolution=8",
        "gctm.source.resolution=8", "distill.batch=16", "gctm.grid=4", "gctm.max_steps=2",
        "distill.compile=false"]


def _folder(path, n, lo, hi, size=8, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sets(*pairs):
    out = []
    for p in pairs:
        out += ["--set", p]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2i")
    a, b = _folder(root / "A", 24, 0, 80), _folder(root / "B", 24, 170, 256, seed=1)
    r = _run("distill", "--preset", "image-translate", "--data", b, "--run-dir", root / "run", "--kimg",
             "0.048", "--device", "cpu", "--json", *_sets(*TINY, f"gctm.source.path={a}"))
    assert r.exit_code == 0, r.stderr
    return root, json.loads(r.stdout)


def test_trains_on_two_folders_and_translates_a_folder(trained):
    root, res = trained
    ckpt = res.get("checkpoint") or next((root / "run").rglob("*.safetensors"))
    r = _run("translate", root / "A", "--ckpt", ckpt, "-o", root / "out", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 24 and out["coupling"] == "dataset-ot"
    assert sorted(p.name for p in (root / "out").iterdir())[:2] == ["000.png", "001.png"]
    # gamma re-noising fits Gaussian sources only
    line = one_error_line(_run("translate", root / "A", "--ckpt", ckpt, "-o", root / "o2", "--nfe", "2",
                               "--gamma", "0.5", "--device", "cpu"))
    assert "gamma" in line


@pytest.mark.parametrize("kind", ["dataset", "dataset-ot"])
def test_dataset_couplings_draw_sources_from_the_other_folder(tmp_path, kind):
    a, b = _folder(tmp_path / "A", 20, 0, 40), _folder(tmp_path / "B", 20, 215, 256, seed=1)
    p = load_preset("image-translate",
                    [*TINY, f"gctm.source.path={a}", f"data.path={b}", f'gctm.coupling="{kind}"'])
    from ctmtool.data import load_dataset

    target = load_dataset(p.data)
    c = make_coupling(kind, source=load_source(p, target))
    x0 = target.get(torch.arange(8))[0]
    g = torch.Generator().manual_seed(0)
    y0, x1 = c.pair(x0, None, g)
    assert torch.equal(y0, x0) and x1.shape == x0.shape
    # dark sources (<= 40), bright targets (>= 215)
    assert float(x1.max()) <= -0.68 and float(x0.min()) >= 0.68
    # OT pairing permutes the drawn sources: the same multiset as an independent draw
    if kind == "dataset-ot":
        g2 = torch.Generator().manual_seed(0)
        drawn = make_coupling("dataset", source=load_source(p, target)).pair(x0, None, g2)[1]
        assert torch.equal(drawn.flatten(1).sum(1).sort().values, x1.flatten(1).sum(1).sort().values)


def test_source_is_resized_and_greyscale_made_rgb(tmp_path):
    a = tmp_path / "A"
    a.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)).save(a / f"{i}.png")
    b = _folder(tmp_path / "B", 3, 0, 256)
    p = load_preset("image-translate", [*TINY, f"gctm.source.path={a}", f"data.path={b}",
                                        "gctm.source.resolution=16", "gctm.source.channels=1"])
    from ctmtool.data import load_dataset

    src = load_source(p, load_dataset(p.data))
    assert src.shape == (3, 8, 8) and int(src.values[2].float().mean().round()) == 20


def test_missing_source_table_is_one_error_line(tmp_path):
    b = _folder(tmp_path / "B", 4, 0, 256)
    r = _run("distill", "--preset", "toy-translate", "--data", b, "--run-dir", tmp_path / "run", "--device",
             "cpu", *_sets("data.source=folder", 'gctm.coupling="dataset"', "net.kind=unet", *TINY[:5]))
    assert "[gctm.source]" in one_error_line(r)


def test_translate_passes_class_labels_to_a_conditional_gctm(tmp_path, make_checkpoint, tiny_preset):
    from ctmtool.core.translate import translate
    from ctmtool.jobs.plan import plan_translation
    from ctmtool.jobs.run_dirs import open_model

    preset = tiny_preset("toy-translate", 'gctm.coupling="independent"', "net.label_dim=3", net="unet")
    ckpt = make_checkpoint(tmp_path / "c.safetensors", "gctm", (3, 8, 8), preset,
                           {"moments": {"var0": 0.3, "var1": 1.0, "cov01": 0.0}}, scale=0.2)
    src = tmp_path / "in"
    for k, cls in enumerate(("a", "b")):
        _folder(src / cls, 2, 0, 256, seed=k)

    def run(out, *args):
        r = _run("translate", src, "--ckpt", ckpt, "-o", tmp_path / out, "--device", "cpu", "--json", *args)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout), np.load(tmp_path / out)["samples"]

    info, from_folders = run("f.npz")
    assert info["class"] == "from the inputs"
    _, one = run("one.npz", "--class", "2")
    model, _ = open_model(str(ckpt), None, "ema", torch.device("cpu"))
    x = torch.from_numpy(np.load(tmp_path / "one.npz")["inputs"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = translate(model, x, plan_translation(model), labels=torch.full((4,), 2))
    assert np.abs(one.astype(int)
                  - ((want + 1) * 127.5).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()).max() <= 1
    assert not np.array_equal(one, from_folders)
    assert "outside the model's 3 classes" in one_error_line(
        _run("translate", src, "--ckpt", ckpt, "-o", tmp_path / "bad", "--class", "5", "--device", "cpu"))
