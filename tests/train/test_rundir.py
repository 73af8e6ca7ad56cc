"""The run directory: a live run is never touched by another process, leftovers of a killed writer are removed,
and a run directory that is a file or cannot be written is a one-line error."""

import errno
import os
import subprocess

import pytest

from ctmtool.errors import UserError
from ctmtool.train import rundir
from ctmtool.train.rundir import RunLock, make_run_dir, remove_leftovers
from ctmtool.train.setup import prepare_run_dir


def _ckpts(d):
    return sorted(p.name for p in d.glob("ckpt-*.safetensors"))


@pytest.fixture
def live_pid():
    """The id of a live process other than this one (a stand-in for a training run)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _run_held_by(tmp_path, pid):
    d = tmp_path / "run"
    d.mkdir()
    for s in (2, 4):
        (d / f"ckpt-{s:08d}.safetensors").write_bytes(b"weights")
    (d / ".lock").write_text(str(pid))
    return d


@pytest.mark.parametrize("resume,force", [(False, True), (True, False), ("auto", False)])
def test_a_live_run_is_refused_before_anything_is_deleted(tmp_path, live_pid, resume, force):
    d = _run_held_by(tmp_path, live_pid)
    with pytest.raises(UserError, match=f"in use by process {live_pid}"):
        prepare_run_dir(d, resume, force)
    assert _ckpts(d) == ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"]
    assert (d / ".lock").read_text() == str(live_pid)  # the live run keeps its lock


def test_force_on_a_dead_run_deletes_its_checkpoints_and_lock(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()  # a process id that is gone (as after kill -9)
    d = _run_held_by(tmp_path, proc.pid)
    assert prepare_run_dir(d, False, force=True) is None
    assert _ckpts(d) == [] and not (d / ".lock").exists()


def test_leftover_temporary_files_are_removed(tmp_path):
    (tmp_path / ".ckpt-00000010.safetensors.k2j3h4.tmp").write_bytes(b"half")
    (tmp_path / ".samples-00000010.png.x1.tmp").write_bytes(b"half")
    keep = tmp_path / "ckpt-00000008.safetensors"
    keep.write_bytes(b"whole")
    gone = remove_leftovers(tmp_path)
    assert len(gone) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [keep.name]


def test_run_dir_that_is_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("not a folder")
    for call in (lambda: make_run_dir(f), lambda: prepare_run_dir(f, False, False)):
        with pytest.raises(UserError, match="is a file, not a directory") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot create `run_dir`"):
        make_run_dir(f / "sub")  # a parent that is a file


def test_unwritable_run_dir_is_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(rundir.os, "open", read_only)
    with pytest.raises(UserError) as err:
        with RunLock(tmp_path):
            pass
    assert "Read-only file system" in str(err.value) and "`run_dir`" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_dir_really(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "ckpt-00000002.safetensors").write_bytes(b"w")
    d.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write in run directory"):
            prepare_run_dir(d, True, False)
    finally:
        d.chmod(0o755)
