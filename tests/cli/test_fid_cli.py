"""`ctmtool fid` and `ctmtool fid stats` from the command line: images, checkpoints, references, errors."""

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
from PIL import Image
from typer.testing import CliRunner

from ctmtool.cli.app import app

FD_A = Path(__file__).resolve().parents[3] / "shared" / "data" / "fd-cifar10" / "fd_a.pt"
needs_fd_a = pytest.mark.skipif(not FD_A.is_file(), reason="shared fd_a.pt not available")
KEYS = {"fid", "n", "features", "features_sha256", "ref", "n_ref", "seed", "mode"}


class _Tiny(torch.nn.Module):
    """A small feature net of any input size: conv, ReLU, global mean -> (B, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.float() / 255 - 0.5)).mean((2, 3))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No real cache, no clean-fid folder, no downloads: nothing outside tmp_path is seen."""
    monkeypatch.setenv("CTMTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CTMTOOL_CLEANFID_DIR", str(tmp_path / "cleanfid"))
    monkeypatch.setenv("CTMTOOL_OFFLINE", "1")
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(app, ["fid", *args, "--device", "cpu"])


def _npz(path: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, samples=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


def _folder(path: Path, n: int, size: int = 32, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (path / cls).mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 256, (size, size, 3),
                                         dtype=np.uint8)).save(path / cls / f"{i}.png")
    return path


def _tiny_net(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Tiny().eval()), str(path))
    return path


@needs_fd_a
def test_fid_of_npz_against_folder_with_fd_a(env):
    samples, ref = _npz(env / "s.npz", 48), _folder(env / "ref", 40)
    r = _run(str(samples), "--ref", str(ref), "--features", str(FD_A), "--json", "--batch", "32")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert KEYS <= set(out) and math.isfinite(out["fid"]) and out["fid"] > 0
    assert (out["n"], out["n_ref"], out["features"], out["features_sha256"], out["mode"]) == \
        (48, 40, "fd_a", "a64751388b36", "native")
    assert "biased upward" in out["note"] and "warning:" in r.stderr and "biased upward" in r.stderr


@needs_fd_a
def test_stats_then_fid_against_stats_file_with_kid_and_no_overwrite(env):
    ref, stats = _folder(env / "ref", 40), env / "ref_stats.npz"
    r = _run("stats", str(ref), "-o", str(stats), "--features", str(FD_A), "--json")
    assert r.exit_code == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["n"] == 40 and made["dim"] == 256 and made["raw_features"] is True and stats.is_file()

    again = _run("stats", str(ref), "-o", str(stats), "--features", str(FD_A))
    assert again.exit_code == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert _run("stats", str(ref), "-o", str(stats), "--features", str(FD_A), "--force").exit_code == 0

    r = _run(str(_npz(env / "s.npz", 30)), "--ref", str(stats), "--features", str(FD_A), "--kid",
             "--kid-subset-size", "20", "--kid-subsets", "5", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert KEYS | {"kid", "kid_std"} <= set(out) and out["n_ref"] == 40 and math.isfinite(out["kid"])


def test_named_reference_in_the_cache(env):
    net = _tiny_net(env / "tiny.pt")
    _npz(env / "real.npz", 30, size=12)
    r = _run("stats", str(env / "real.npz"), "--name", "toyref", "--features", str(net), "--cache-dir",
             str(env / "c"))
    assert r.exit_code == 0, r.stderr
    assert (env / "c" / "stats" / "toyref_tiny.npz").is_file()
    r = _run(str(_npz(env / "s.npz", 20, size=12, seed=4)), "--ref", "toyref", "--features", str(net),
             "--cache-dir", str(env / "c"), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ref"] == "toyref"
    missing = _run(str(env / "s.npz"), "--ref", "otherref", "--features", str(net), "--cache-dir",
                   str(env / "c"))
    assert missing.exit_code == 2 and "otherref_tiny.npz" in missing.stderr


def test_checkpoint_samples_are_generated_in_memory(env, make_checkpoint, tiny_preset):
    ckpt = make_checkpoint(env / "tiny.safetensors", "ctm", (3, 16, 16), tiny_preset("digits", net="unet"))
    ref, feats = _npz(env / "ref.npz", 24, size=16), _tiny_net(env / "f.pt")
    before = set(env.rglob("*"))
    r = _run(str(ckpt), "--ref", str(ref), "--features", str(feats), "--n", "6", "--batch", "4", "--seed",
             "5", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert KEYS <= set(out) and math.isfinite(out["fid"])
    assert (out["n"], out["seed"], out["source"], out["solver"],
            out["nfe"]) == (6, 5, "checkpoint", "gamma", 1)
    assert set(env.rglob("*")) - before == set()  # no sample images written


def test_offline_without_inception_fails_with_one_line(env):
    """A real process: exit code 2 and one `error:` line naming the missing file, where it goes and its
    URL."""
    a, b = _npz(env / "a.npz", 4), _npz(env / "b.npz", 4, seed=1)
    proc = subprocess.run([sys.executable, "-m", "ctmtool", "fid", str(a), "--ref", str(b), "--device",
                           "cpu"],
                          capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert ("inception-2015-12-05.pt" in errors[0]
            and str(env / "cache" / "inception-2015-12-05.pt") in errors[0])
    assert str(env / "cleanfid") in errors[0] and "https://" in errors[0]


def test_cache_dir_option_is_where_inception_is_expected(env):
    r = _run(str(_npz(env / "a.npz", 4)), "--ref", str(env / "a.npz"), "--cache-dir", str(env / "elsewhere"))
    assert r.exit_code == 2 and str(env / "elsewhere" / "inception-2015-12-05.pt") in r.stderr


@pytest.mark.parametrize("args, message", [
    (["stats"], "give DATA (images, - for stdin, or a checkpoint) or --ckpt"),
    (["stats", "x.npz"], "exactly one of -o"),
    # a real sub-command: its own options
    (["stats", "x.npz", "-o", "o.npz", "--ref", "r"], "No such option: --ref"),
    (["a.npz", "b.npz"], "unexpected extra argument"),
    (["a.npz", "-o", "o.npz"], "No such option: -o"),
    (["missing.npz", "--ref", "r"], "does not exist"),
])
def test_usage_errors(env, args, message):
    r = _run(*args)
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_kid_against_moments_only_statistics_is_refused_early(env):
    net = _tiny_net(env / "tiny.pt")
    real, stats = _npz(env / "real.npz", 20, size=12), env / "m.npz"
    assert _run("stats", str(real), "-o", str(stats), "--features", str(net), "--no-features").exit_code == 0
    r = _run(str(real), "--ref", str(stats), "--features", str(net), "--kid")
    assert r.exit_code == 2 and "--kid needs raw reference features" in r.stderr
    ok = _run(str(real), "--ref", str(stats), "--features", str(net), "--json")
    assert ok.exit_code == 0 and abs(json.loads(ok.stdout)["fid"]) < 1e-6  # same images: zero distance
