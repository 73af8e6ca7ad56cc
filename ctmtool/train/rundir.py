"""The run directory: its lock, its periodic checkpoints and their rotation, and what a killed writer left.

One process trains in a run directory at a time: `RunLock` is an exclusive `.lock` file holding the writer's
process id; a lock whose process is gone (kill -9) is taken over. Everything that deletes files in a run
directory (`--force`, rotation, leftover temporary files) does so only while holding the lock, so a live run's
checkpoints are never deleted by another process.
"""

from __future__ import annotations

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
        raise UserError(f"cannot create `run_dir` {run_dir}: {err.strerror or err}; choose a writable `run_dir`") from None
    return run_dir


class RunLock:
    """An exclusive lock file in the run directory: a second writer is refused with a clear message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = self.path.read_text().strip() or "?"
            if pid.isdigit() and not _alive(int(pid)):
                self.path.unlink(missing_ok=True)
                return self.__enter__()
            raise UserError(f"run directory {self.path.parent} is in use by process {pid}; wait for it, "
                            f"or delete {self.path} if that process is gone") from None
        except OSError as err:  # read-only folder or file system, no space for the lock file
            raise UserError(f"cannot write in run directory {self.path.parent}: {err.strerror or err}; "
                            "choose a writable `run_dir`") from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
