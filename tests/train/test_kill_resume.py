"""Fault tolerance: a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run;
a full disk leaves the previous checkpoint intact with a one-line error; --resume auto continues a run."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.errors import UserError
from ctmtool.train.run import train

SETS = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512", "teacher.batch=32",
        "teacher.ckpt_every_kimg=0.32", "teacher.keep_checkpoints=2", "teacher.log_every_kimg=100"]
KIMG = "6.4"  # 200 steps


def _cmd(run_dir, *extra):
    sets = [a for s in SETS for a in ("--set", s)]
    return [sys.executable, "-m", "ctmtool", "teacher", "--preset", "toy", *sets, "--kimg", KIMG,
            "--run-dir", str(run_dir), "--device", "cpu", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "1"}


def _final(run_dir):
    ckpt = load_checkpoint(sorted(run_dir.glob("ckpt-*.safetensors"))[-1])
    return ckpt.meta["step"], ckpt.groups


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    subprocess.run(_cmd(tmp_path / "a"), env=_env(), check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(_cmd(tmp_path / "b"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list((tmp_path / "b").glob("ckpt-*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _final(tmp_path / "b")[0]
    assert killed_at < 200 and (tmp_path / "b" / ".lock").exists()  # a stale lock from the dead process
    subprocess.run(_cmd(tmp_path / "b", "--resume"), env=_env(), check=True, capture_output=True, timeout=120)
    step_a, a = _final(tmp_path / "a")
    step_b, b = _final(tmp_path / "b")
    assert step_a == step_b == 200
    for group in ("net", "ema", "optim_net"):
        for name, t in a[group].items():
            assert torch.equal(t, b[group][name]), f"{group}/{name}"


def test_full_disk_keeps_the_old_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    preset = load_preset("toy", SETS + ["teacher.kimg=0.32"])
    train(preset, "teacher", tmp_path, torch.device("cpu"), Reporter(quiet=True))
    old = sorted(tmp_path.glob("ckpt-*.safetensors"))
    before = old[-1].read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ctmtool.checkpoint.save_file", no_space)
    longer = load_preset("toy", SETS + ["teacher.kimg=0.64"])
    with pytest.raises(UserError) as err:
        train(longer, "teacher", tmp_path, torch.device("cpu"), Reporter(quiet=True), resume=True)
    assert "\n" not in str(err.value) and "No space left on device" in str(err.value)
    assert sorted(tmp_path.glob("ckpt-*.safetensors")) == old and old[-1].read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary file left behind
    assert load_checkpoint(old[-1]).meta["step"] == 10
