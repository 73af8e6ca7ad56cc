"""The run directory: its lock, its periodic checkpoints and their rotation, and what a killed writer left.

One process trains in a run directory at a time: `RunLock` is an `flock` on `.lock` (which holds the writer's
process id), held from before the directory is inspected until the run ends; a lock whose process is gone
(kill -9) is taken over. Everything that deletes files in a run
directory (`--force`, rotation, leftover temporary files) does so only while holding the lock, so a live run's
checkpoints are never deleted by another process.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ctmtool.errors import UserError

CKPT_GLOB = "ckpt-*.safetensors"
TMP_GLOBS = (".ckpt-*.tmp", ".samples-*.tmp")  # `atomic_write` temporaries left by a writer killed mid-write


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def make_run_dir(run_dir: Path) -> Path:
    """Create the run directory; a path that is a file or cannot be created is a one-line error."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"`run_dir` {run_dir} is a file, not a directory; choose another `run_dir`")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create `run_dir` {run_dir}: {err.strerror or err}; choose a writable "
                        "`run_dir`") from None
    return run_dir


class RunLock:
    """The run directory's writer lock: `flock` on `.lock`, which holds the writer's process id for messages.

    The kernel owns the lock: it is atomic (one holder, always), released when the holder dies however it dies
    (kill -9 included), so a stale lock is taken over by simply locking it, and a `.lock` left empty (a full
    disk when the id was written) refuses nothing. A holder checks, after locking, that the file it locked is
    still the one at `.lock` (another holder may have removed it on release) and otherwise locks again."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as err:  # read-only folder or file system, no room for the lock file
                raise UserError(f"cannot write in run directory {self.path.parent}: {err.strerror or err}; "
                                "choose a writable `run_dir`") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid = _holder(self.path)
                raise UserError(f"run directory {self.path.parent} is in use by process {pid}; wait for it "
                                "to finish, or choose another `run_dir`") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by the holder we waited on: lock the new one
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:  # a full disk: the lock holds anyway; the id is only for messages
            pass
        return self

    def __exit__(self, *exc):
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: a waiter then finds the file gone and retries
        os.close(self.fd)
        self.fd = None


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else "(unknown id)"


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files of a writer that was killed mid-write (call with the lock held)."""
    gone = [f for pattern in TMP_GLOBS for f in run_dir.glob(pattern)]
    for f in gone:
        f.unlink(missing_ok=True)
    return gone


def rotate(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` periodic checkpoints."""
    files = sorted(run_dir.glob(CKPT_GLOB))
    for f in files[:-keep]:
        f.unlink(missing_ok=True)
