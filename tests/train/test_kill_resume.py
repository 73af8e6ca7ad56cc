"""Fault tolerance: a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run;
a full disk leaves the previous checkpoint intact with a one-line error; --resume auto continues a run."""

import errno
import os
import re
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


def _await_checkpoint(proc: subprocess.Popen, run_dir, seconds: float = 60) -> None:
    """Wait until `proc` wrote its first checkpoint in run_dir (or ended, or `seconds` passed)."""
    deadline = time.time() + seconds
    while not list(run_dir.glob("ckpt-*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    subprocess.run(_cmd(tmp_path / "a"), env=_env(), check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(_cmd(tmp_path / "b"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _await_checkpoint(proc, tmp_path / "b")
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


# A time-limited run: the loop's clock is the run's own work (1 s per optimiser step), so "minutes" are exact
# and
# the killed and resumed run must end bit-identical to the uninterrupted one, cosine schedule included.
TIMED = """
import sys
from pathlib import Path

import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.config import load_preset
from ctmtool.data import load_dataset
from ctmtool.progress import Quiet
from ctmtool.train.loop import fit
from ctmtool.train.teacher_objective import TeacherObjective

torch.set_num_threads(1)
run_dir, resume = Path(sys.argv[1]), len(sys.argv) > 2
preset = load_preset("toy", SETS + ["teacher.kimg=1000", "teacher.minutes=3.3333333333",
                                    "teacher.lr_decay=cosine"])
data = load_dataset(preset.data)
obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
ckpt = load_checkpoint(sorted(run_dir.glob("ckpt-*.safetensors"))[-1]) if resume else None
res = fit(obj, data, preset.teacher, run_dir, Quiet(), device=torch.device("cpu"), resume=ckpt,
          clock=lambda: float(obj.steps))
print(res.steps, res.stopped_by, res.total_seconds)
"""


def test_sigkill_then_resume_equals_uninterrupted_for_a_time_limited_run(tmp_path):
    script = tmp_path / "timed.py"
    script.write_text(f"SETS = {SETS!r}\n" + TIMED)
    run = [sys.executable, str(script)]
    out = subprocess.run(run + [str(tmp_path / "a")], env=_env(), check=True, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["200", "minutes", "200.0"]  # 200 steps of 1 s in 3.33 minutes
    proc = subprocess.Popen(run + [str(tmp_path / "b")], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _await_checkpoint(proc, tmp_path / "b")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _final(tmp_path / "b")[0]
    assert 0 < killed_at < 200
    out = subprocess.run(run + [str(tmp_path / "b"), "--resume"], env=_env(), check=True, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["200", "minutes", "200.0"]  # the time budget continued where it stopped
    a, b = (load_checkpoint(sorted((tmp_path / r).glob("ckpt-*.safetensors"))[-1]) for r in ("a", "b"))
    assert (a.meta["step"] == b.meta["step"] == 200
            and a.meta["train_seconds"] == b.meta["train_seconds"] == 200.0)
    assert a.meta["optim_net"] == b.meta["optim_net"]  # the same learning rate at the end
    for group in ("net", "ema", "optim_net"):
        for name, t in a.groups[group].items():
            assert torch.equal(t, b.groups[group][name]), f"{group}/{name}"


def test_sigterm_saves_and_exits_143(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--kimg", "1000"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _await_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # a job scheduler sees the run did not finish
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training stopped by SIGTERM") and "--resume" in last
    saved = sorted(tmp_path.glob("ckpt-*.safetensors"))[-1]
    assert str(saved) in last and not (tmp_path / ".lock").exists() and out == ""
    stopped_at = int(re.search(r"\(step (\d+)\)", last).group(1))
    assert load_checkpoint(saved).meta["step"] == stopped_at > 0  # the state at the stop itself was saved


def test_full_disk_at_the_sample_picture_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from PIL import Image

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", no_space)
    with pytest.raises(UserError) as err:
        train(load_preset("toy", SETS + ["teacher.kimg=0.32"]), "teacher", tmp_path, torch.device("cpu"),
              Reporter(quiet=True))
    assert ("\n" not in str(err.value) and "No space left on device" in str(err.value)
            and "samples-" in str(err.value))
    assert load_checkpoint(tmp_path / "ckpt-00000010.safetensors").meta["step"] == 10
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.png"))
