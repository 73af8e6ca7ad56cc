"""Zero-shot restoration by iterative jumps: the known part is kept, the projections equal the official code's
orthogonal-matrix form, the loop equals a transcription of the official colourisation loop (sony/ctm
sample_util.py `iterative_colorization`, started from the noised observation), and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.core.editing import edit_schedule
from ctmtool.core.sampling import SamplingPlan
from ctmtool.core.zero_shot import centre_hole, observed, project, restore
from tests.cli.conftest import one_error_line

IMG = (3, 16, 16)


def _official_q(vector: np.ndarray) -> torch.Tensor:
    """The official `obtain_orthogonal_matrix`: QR of the identity with its first column set to `vector`."""
    v = vector / np.linalg.norm(vector)
    m = np.eye(len(v))
    m[:, 0] = v
    q = np.linalg.qr(m)[0]
    return torch.from_numpy(-q if q[:, 0].sum() < 0 else q)


def _images(n=3, seed=0):
    return torch.rand(n, *IMG, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_projections_equal_the_official_orthogonal_matrix_replacements():
    x0, x1 = _images(2, 1), _images(2, 2)
    q = _official_q(np.asarray([0.2989, 0.5870, 0.1140]))
    mask = torch.zeros(3, 16, 16, dtype=torch.float64)
    mask[0] = 1
    a, b = torch.einsum("bchw,cd->bdhw", x0, q), torch.einsum("bchw,cd->bdhw", x1, q)
    official = torch.einsum("bdhw,cd->bchw", a * mask + b * (1 - mask), q)  # their replacement(x0, x1)
    ours = project("colorize", x0) + x1 - project("colorize", x1)
    assert torch.allclose(ours, official, atol=1e-12)
    # super-resolution: the first basis vector of each 4x4 patch is uniform, so the kept coefficient is the
    # mean
    p = 4
    qs = _official_q(np.ones(p * p))
    flat = x0.reshape(2, 3, 4, p, 4, p).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, p * p)
    coef = torch.einsum("bcnd,de->bcne", flat, qs)
    assert torch.allclose(coef[..., 0] / p, flat.mean(-1), atol=1e-12)
    kept = torch.einsum("bcne,de->bcnd", torch.cat([coef[..., :1], torch.zeros_like(coef[..., 1:])], -1), qs)
    kept = kept.reshape(2, 3, 4, 4, p, p).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, 16)
    assert torch.allclose(project("superres", x0, factor=p), kept, atol=1e-12)


def _plan(model, level: float, nfe: int, gamma: float = 1.0) -> SamplingPlan:
    """What `ctmtool.jobs.plan.plan_restoration` builds: `nfe` jumps down the edit schedule from `level`."""
    return SamplingPlan("gamma", edit_schedule(model, level, nfe), gamma)


def _noise(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(3, *IMG, generator=g)


def test_restore_equals_the_transcribed_official_colourisation_loop(make_model, tiny_preset):
    model = make_model("ctm", IMG, tiny_preset("digits", net="unet"), scale=0.05)
    y = _images().float()
    ours = restore(model, y, "colorize", _plan(model, 80.0, 3), _noise(0))
    # the official loop (gamma = 1, CM-like), with the official Q replacement, levels and noise of the same
    # order
    q = _official_q(np.asarray([0.2989, 0.5870, 0.1140])).float()
    mask = torch.zeros(3, 16, 16)
    mask[0] = 1

    def replacement(a, b):
        a, b = torch.einsum("bchw,cd->bdhw", a, q), torch.einsum("bchw,cd->bdhw", b, q)
        return torch.einsum("bdhw,cd->bchw", a * mask + b * (1 - mask), q)

    draw = _noise(0)
    mono = replacement(y, torch.zeros_like(y))
    ts = [float(v) for v in edit_schedule(model, 80.0, 3)]
    t_min = ts[-1]
    x = mono + ts[0] * draw()
    with torch.no_grad():
        for i in range(len(ts) - 1):
            x0 = model.net.jump(x, ts[i], t_min).clamp(-1, 1)
            x0 = replacement(mono, x0)
            x = x0 + draw() * np.sqrt(ts[i + 1] ** 2 - t_min**2) if i < len(ts) - 2 else x0
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("kind", ["ctm", "gctm"])
def test_inpainting_keeps_the_known_pixels(make_model, tiny_preset, kind):
    preset = (tiny_preset("digits", net="unet") if kind == "ctm" else
              tiny_preset("toy-translate", 'gctm.coupling="independent"', net="unet"))
    meta = {"moments": {"var0": 0.3, "var1": 1.0, "cov01": 0.0}} if kind == "gctm" else None
    model = make_model(kind, IMG, preset, meta=meta, scale=0.05)
    y = (_images() * 0.9).float()
    hole = centre_hole(IMG)
    for gamma in (1.0, 0.5):
        plan = _plan(model, model.net.strength_level(1.0), 3, gamma)
        x = restore(model, y, "inpaint", plan, _noise(1), hole=hole)
        # known pixels exactly; the hole filled by the model
        assert torch.equal(x * (1 - hole), y * (1 - hole))
        assert not torch.equal(x * hole, observed("inpaint", y, hole) * hole)


def test_cli_restore_writes_outputs_and_keeps_patch_means(tmp_path, make_checkpoint, tiny_preset):
    ckpt = make_checkpoint(tmp_path / "ctm.safetensors", "ctm", IMG, tiny_preset("digits", net="unet"),
                           scale=0.05)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(60, 200, (16, 16, 3), dtype=np.uint8)).save(src / f"im{i}.png")

    def run(*args):
        return CliRunner().invoke(app, ["translate", "edit", str(src), "--ckpt", str(ckpt), "--device", "cpu",
                                        *args])

    r = run("--restore", "superres", "--factor", "4", "--nfe", "2", "-o", str(tmp_path / "sr"), "--json",
            "--grid", str(tmp_path / "g.png"))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["restore"] == "superres" and out["files"] == 2 and out["known_part_error"] < 1e-5
    r = run("--restore", "inpaint", "-o", str(tmp_path / "in.npz"), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["known_part_error"] == 0.0
    assert "divide the image size" in one_error_line(run("--restore", "superres", "--factor", "5", "-o",
                                                         str(tmp_path / "x")))
    # a fixed choice, refused by the command line before any work (issue 24)
    assert "'deblur' is not one of 'inpaint', 'colorize', 'superres'" in one_error_line(
        run("--restore", "deblur", "-o", str(tmp_path / "y")))
    assert "--mask marks the hole" in one_error_line(run("--restore", "colorize", "--mask",
                                                         str(src / "im0.png"), "-o", str(tmp_path / "z")))
