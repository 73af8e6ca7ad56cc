"""`ctmtool metrics` from the command line: every metric on a TorchScript net with all heads, on fd_a.pt,
on a checkpoint's samples; the figures equal the library functions on the same features; errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.metrics.frechet import frechet_distance
from ctmtool.metrics.scores import inception_score, precision_recall
from tests.cli.conftest import one_error_line

FD_A = Path(__file__).resolve().parents[3] / "shared" / "data" / "fd-cifar10" / "fd_a.pt"
needs_fd_a = pytest.mark.skipif(not FD_A.is_file(), reason="shared fd_a.pt not available")


class _Heads(torch.nn.Module):
    """forward -> (B, 8) pooled features, classify -> (B, 5) logits, spatial -> (B, 8, H-2, W-2) maps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8, 5)

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.float() / 255 - 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._maps(x).mean((2, 3))

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * self.head(self.forward(x))

    @torch.jit.export
    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self._maps(x)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CTMTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CTMTOOL_CLEANFID_DIR", str(tmp_path / "cleanfid"))
    monkeypatch.setenv("CTMTOOL_OFFLINE", "1")
    return tmp_path


def _net(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Heads().eval()), str(path))
    return path


def _npz(path: Path, n: int, size: int = 12, seed: int = 0, lo: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, samples=rng.integers(lo, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def _run(*args: str):
    return CliRunner().invoke(app, ["metrics", *args, "--device", "cpu"])


def test_all_metrics_equal_the_library_functions_on_the_same_features(env):
    net, fake, real = (_net(env / "heads.pt"), _npz(env / "fake.npz", 40, lo=60),
                       _npz(env / "real.npz", 50, seed=1))
    r = _run(str(fake), "--ref", str(real), "--features", str(net), "--json", "--batch", "16",
             "--is-split-size", "20", "--kid-subset-size", "30", "--kid-subsets", "5")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metrics"] == ["fid", "kid", "is", "pr", "sfid"] and (out["n"], out["n_ref"]) == (40, 50)
    # recompute from the network directly, on the same images
    m = torch.jit.load(str(net))
    xf = torch.from_numpy(np.load(fake)["samples"]).permute(0, 3, 1, 2).contiguous()
    xr = torch.from_numpy(np.load(real)["samples"]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        pf, pr_ = m(xf).double().numpy(), m(xr).double().numpy()
        sf, sr = (m.spatial(xf)[:, :7].flatten(1).double().numpy(),
                  m.spatial(xr)[:, :7].flatten(1).double().numpy())
        lg = m.classify(xf).double().numpy()

    def fd(a, b):
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))

    assert out["fid"] == pytest.approx(fd(pf, pr_), rel=1e-4)
    assert out["sfid"] == pytest.approx(fd(sf, sr), rel=1e-4)
    assert out["is"] == pytest.approx(inception_score(lg, 20, seed=0)[0], rel=1e-4) and out["is_splits"] == 2
    assert (out["precision"], out["recall"]) == pytest.approx(precision_recall(pr_, pf, 3), abs=1e-9)
    assert out["fid"] > 0 and math.isfinite(out["kid"]) and 1 <= out["is"] <= 5


def test_is_alone_needs_no_reference_and_sfid_needs_a_spatial_head(env):
    net = _net(env / "heads.pt")
    r = _run(str(_npz(env / "a.npz", 10)), "--metrics", "is", "--features", str(net), "--json")
    assert r.exit_code == 0, r.stderr
    assert set(json.loads(r.stdout)) >= {"is", "is_std"} and "fid" not in json.loads(r.stdout)
    line = one_error_line(_run(str(env / "a.npz"), "--metrics", "fid", "--features", str(net)))
    assert "--ref" in line


@needs_fd_a
def test_fd_a_gives_is_from_its_classifier_and_refuses_sfid(env):
    fake, real = _npz(env / "f.npz", 24, size=32), _npz(env / "r.npz", 24, size=32, seed=3)
    r = _run(str(fake), "--ref", str(real), "--features", str(FD_A), "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metrics"] == ["fid", "kid", "is", "pr"] and 1 <= out["is"] <= 10  # 10 CIFAR-10 classes
    line = one_error_line(_run(str(fake), "--ref", str(real), "--features", str(FD_A), "--metrics", "sfid"))
    assert "spatial(x)" in line and "fd_a.pt" in line


def test_checkpoint_samples(env, make_checkpoint, tiny_preset):
    ckpt = make_checkpoint(env / "tiny.safetensors", "ctm", (3, 16, 16), tiny_preset("digits", net="unet"))
    r = _run(str(ckpt), "--ref", str(_npz(env / "r.npz", 12, size=16)), "--features", str(_net(env / "h.pt")),
             "-n", "8", "--batch", "4", "--json", "--kid-subset-size", "8", "--is-split-size", "4")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["n"], out["solver"], out["nfe"]) == (8, "gamma", 1) and math.isfinite(out["sfid"])


@pytest.mark.parametrize("args,message", [
    (["--metrics", "fid,bogus"], "unknown metric bogus"),
    (["--k", "0"], "--k must be at least 1"),
    (["--ref", "nope.npz"], "does not exist"),
])
def test_usage_errors(env, args, message):
    net = _net(env / "h.pt")
    line = one_error_line(_run(str(_npz(env / "a.npz", 6)), "--features", str(net), *args))
    assert message in line


def test_offline_inception_names_its_weight_file(env):
    a = _npz(env / "a.npz", 4)
    proc = subprocess.run([sys.executable, "-m", "ctmtool", "metrics", str(a), "--ref", str(a), "--device",
                           "cpu"],
                          capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(env / "cache" / "inception-2015-12-05.pt") in errors[0]
