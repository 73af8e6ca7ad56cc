"""The GCTM paper's presets (ffhq64-sr2/-deblur/-inpaint, cifar10-gctm) through the CLI, shrunk to tiny
networks and images the test makes: they train a few steps with the paper's fixed moments and their operators,
and a missing data folder is one error line saying what to download and where it goes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.app import app
from ctmtool.config import load_preset
from tests.cli.conftest import one_error_line

TINY = ["net.unet.model_channels=16", "net.unet.channel_mult=[1]", "net.unet.num_blocks=1",
        "net.unet.attn_resolutions=[]", "net.unet.dropout=0.0", "data.resolution=16", "distill.batch=8",
        "gctm.grid=3", "gctm.max_steps=2"]


def _sets(items):
    out = []
    for s in items:
        out += ["--set", s]
    return out


def _faces(folder, n=8):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


@pytest.mark.parametrize("preset", ["ffhq64-sr2", "ffhq64-deblur", "ffhq64-inpaint", "cifar10-gctm"])
def test_paper_presets_train_a_few_steps_with_their_settings(tmp_path, preset):
    data = _faces(tmp_path / "faces")
    r = CliRunner().invoke(app, ["distill", "--preset", preset, "--data", str(data), "--run-dir",
                                 str(tmp_path / "run"), "--kimg", "0.016", "--device", "cpu", "--json",
                                 *_sets(TINY)])
    assert r.exit_code == 0, r.stderr
    ckpt = load_checkpoint(next((tmp_path / "run").rglob("*.safetensors")))
    p = load_preset(preset)
    moments = {k: ckpt.meta["moments"][k] for k in ("var0", "var1", "cov01")}
    assert moments == {"var0": p.gctm.var0, "var1": p.gctm.var1, "cov01": p.gctm.cov01}
    assert ckpt.preset.gctm.coupling == p.gctm.coupling and ckpt.preset.distill.lr == p.distill.lr


def test_paper_settings_as_the_official_configs():
    p = load_preset("ffhq64-inpaint")
    assert (p.distill.batch, p.distill.lr, p.net.unet.model_channels, p.net.unet.num_blocks,
            p.gctm.dsm_times) == \
        (64, 1e-4, 128, 4, "beta_3_1")
    assert tuple(p.gctm.t_ctm_beta) == (1.0, 1.0) and p.gctm.time_sampler == "official"
    c = load_preset("cifar10-gctm").gctm
    assert (c.coupling, c.double_every) == ("independent", 50000)


def test_missing_ffhq_folder_says_what_to_download(tmp_path):
    r = CliRunner().invoke(app,
                           ["distill", "--preset", "ffhq64-sr2", "--data", str(tmp_path / "FFHQ64" / "train"),
                                 "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    line = one_error_line(r)
    assert "does not exist" in line and "ffhq-dataset" in line and "64x64" in line
