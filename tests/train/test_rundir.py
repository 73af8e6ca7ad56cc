"""The run directory: a live run is never touched by another process, leftovers of a killed writer are
removed, and a run directory that is a file or cannot be written is a one-line error."""

import errno
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import time

import pytest

from ctmtool.errors import UserError
from ctmtool.train import rundir
from ctmtool.train.rundir import RunLock, make_run_dir, remove_leftovers
from ctmtool.train.setup import prepare_run_dir


def _ckpts(d):
    return sorted(p.name for p in d.glob("ckpt-*.safetensors"))


HOLD = ("import sys; from pathlib import Path; from ctmtool.train.rundir import RunLock\n"
        "with RunLock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()")


def _run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for s in (2, 4):
        (d / f"ckpt-{s:08d}.safetensors").write_bytes(b"weights")
    return d


@pytest.fixture
def held(tmp_path):
    """A run directory with two checkpoints whose lock another live process holds: (folder, its process
    id)."""
    d = _run_dir(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield d, proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("resume,force", [(False, True), (True, False), ("auto", False)])
def test_a_live_run_is_refused_before_anything_is_deleted(held, resume, force):
    d, pid = held
    with pytest.raises(UserError, match=f"in use by process {pid}"):
        prepare_run_dir(d, resume, force)
    assert _ckpts(d) == ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"]
    assert (d / ".lock").read_text() == str(pid)  # the live run keeps its lock


def test_force_on_a_dead_run_deletes_its_checkpoints_and_lock(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()  # a process id that is gone (as after kill -9): its lock file stays, unlocked
    d = _run_dir(tmp_path)
    (d / ".lock").write_text(str(proc.pid))
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


def _take_once(run_dir, marker, out):
    """Take the lock (retrying while it is held), prove no one else holds it, then die as kill -9 would: the
    lock file stays behind with a dead process id, for the next taker to take over."""
    while True:
        try:
            RunLock(run_dir).__enter__()
            break
        except UserError:
            continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        os.write(out, b"D")  # someone else holds the lock too
        os._exit(0)
    time.sleep(0.005)
    os.close(fd)
    os.unlink(marker)
    os._exit(0)


def test_stale_locks_are_taken_over_by_one_process_at_a_time(tmp_path):
    """Issue 29: taking over a stale lock let two processes hold it at once in 16 of 100 trials."""
    read, write = os.pipe()
    d = tmp_path / "run"
    d.mkdir()
    (d / ".lock").write_text("999999999")  # stale from the start
    ctx = multiprocessing.get_context("fork")
    for _ in range(4):
        procs = [ctx.Process(target=_take_once, args=(d, tmp_path / "holder", write)) for _ in range(8)]
        for p in procs:
            p.start()
        left = {p.sentinel: p for p in procs}
        t0 = time.monotonic()
        # reap each at once: a zombie's process id still looks alive
        while left and time.monotonic() - t0 < 60:
            for s in multiprocessing.connection.wait(list(left), timeout=1):
                left.pop(s).join()
        assert not left and all(p.exitcode == 0 for p in procs)
    os.close(write)
    assert os.read(read, 1000) == b""  # no process ever found another holder


def test_an_empty_lock_left_by_a_full_disk_refuses_nothing(tmp_path):
    (tmp_path / ".lock").write_text("")  # what a full disk left: the file, no process id
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_the_lock_holds_when_the_process_id_cannot_be_written(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", full)
    with RunLock(tmp_path):
        monkeypatch.setattr(rundir.os, "write", real_write)
        with pytest.raises(UserError, match=r"in use by process \(unknown id\)"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released: the folder is usable again
        pass


TRY = ("import sys; from pathlib import Path; from ctmtool.errors import UserError; from "
       "ctmtool.train.rundir import RunLock\n"
       "try:\n    RunLock(Path(sys.argv[1])).__enter__(); print('took')\nexcept UserError:\n    "
       "print('refused')")


def test_the_lock_is_held_from_inspecting_the_folder_to_the_end_of_the_run(tmp_path, monkeypatch):
    """Two runs started seconds apart both ran: the lock was let go between inspecting the folder and
    training, so the second passed its checks while the first built its data and networks, then rotated the
    first's checkpoints."""
    import torch

    import ctmtool.train.run as run
    from ctmtool.config import load_preset

    tries = []
    build = run._teacher_parts

    def parts(*args, **kwargs):  # while the first run builds: another process tries the lock
        tries.append(subprocess.run([sys.executable, "-c", TRY, str(tmp_path / "run")], capture_output=True,
                                    text=True, timeout=120).stdout.strip())
        return build(*args, **kwargs)

    monkeypatch.setattr(run, "_teacher_parts", parts)
    p = load_preset("toy",
                    ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=64", "teacher.batch=32",
                            "teacher.kimg=0.064"])
    run.train(p, "teacher", tmp_path / "run", torch.device("cpu"))
    assert tries == ["refused"]
    assert not (tmp_path / "run" / ".lock").exists()  # released at the end
