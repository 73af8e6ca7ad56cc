"""`ctmtool translate --metrics`: PSNR/SSIM/LPIPS of the outputs against references, checked against
scikit-image on the written files; SSIM itself against scikit-image and the closed form of identical
images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.metrics.restoration import psnr, ssim
from tests.cli.conftest import one_error_line

IMG = (3, 16, 16)


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args] + ["--device", "cpu"])


@pytest.fixture
def gctm(tmp_path, make_checkpoint, tiny_preset):
    preset = tiny_preset("toy-translate", 'gctm.coupling="corrupt:blur"')
    meta = {"moments": {"var0": 0.3, "var1": 0.3, "cov01": 0.2}}
    return make_checkpoint(tmp_path / "gctm.safetensors", "gctm", IMG, preset, meta, scale=0.1)


def _images(folder, n=4, seed=0, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names or [f"img{i}" for i in range(n)]:
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _u8(folder, names):
    return np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])


def test_degrade_metrics_against_the_clean_inputs_match_scikit_image(tmp_path, gctm):
    src = _images(tmp_path / "in")
    r = _run("translate", src, "--ckpt", gctm, "-o", tmp_path / "out", "--degrade", "--metrics", "psnr,ssim",
             "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    names = [f"img{i}" for i in range(4)]
    y, clean = _u8(tmp_path / "out", names), _u8(src, names)
    want = np.mean([peak_signal_noise_ratio(c, o, data_range=255) for c, o in zip(clean, y, strict=True)])
    assert out["psnr"] == pytest.approx(want, rel=1e-9) and "clean inputs" in out["metrics_ref"]
    ssim_u8 = np.mean([structural_similarity(c / 255, o / 255, gaussian_weights=True, sigma=1.5,
                                             data_range=1.0, use_sample_covariance=False, channel_axis=2)
                       for c, o in zip(clean, y, strict=True)])
    assert out["ssim"] == pytest.approx(ssim_u8, abs=5e-3)  # ours on float outputs, these on the saved uint8


def test_ref_folder_is_matched_by_file_name(tmp_path, gctm):
    src = _images(tmp_path / "in", names=["b", "a"], seed=1)
    ref = _images(tmp_path / "ref", names=["a", "c", "b"], seed=2)
    r = _run("translate", src, "--ckpt", gctm, "-o", tmp_path / "out", "--metrics", "psnr", "--ref", ref,
             "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    y, refs = _u8(tmp_path / "out", ["a", "b"]), _u8(ref, ["a", "b"])
    want = np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(refs, y, strict=True)])
    assert out["psnr"] == pytest.approx(want, rel=1e-9) and "by file name" in out["metrics_ref"]


@pytest.mark.parametrize("args,message", [
    (["--metrics", "psnr"], "--metrics needs references"),
    (["--ref", "REF"], "--ref gives the references of --metrics"),
    (["--metrics", "psnr,fid"], "unknown metric fid"),
    (["--metrics", "lpips", "--degrade"], "vgg16-397923af.pth"),
])
def test_errors(tmp_path, gctm, args, message, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    src = _images(tmp_path / "in")
    args = [str(_images(tmp_path / "r", n=2)) if a == "REF" else a for a in args]
    assert message in one_error_line(_run("translate", src, "--ckpt", gctm, "-o", tmp_path / "o", *args))
    assert not (tmp_path / "o").exists()


def test_ssim_and_psnr_against_scikit_image_and_closed_forms():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 24, 20, generator=g, dtype=torch.float64) * 2 - 1
    x = (ref + 0.3 * torch.randn(ref.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    a, b = ((x + 1) / 2).numpy(), ((ref + 1) / 2).numpy()
    theirs = [structural_similarity(b[i], a[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=0) for i in range(3)]
    assert ssim(x, ref).numpy() == pytest.approx(theirs, abs=1e-9)
    assert ssim(ref, ref).numpy() == pytest.approx([1.0] * 3, abs=1e-12)
    assert torch.isinf(psnr(ref, ref)).all()
    # one grey level off everywhere: MSE 1, PSNR = 20 log10(255)
    u = torch.full((1, 1, 12, 12), 100.0)
    assert float(psnr(u / 127.5 - 1, (u + 1) / 127.5 - 1)) == pytest.approx(20 * np.log10(255), rel=1e-9)
