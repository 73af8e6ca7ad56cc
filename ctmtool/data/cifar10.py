"""The official CIFAR-10 python release (cifar-10-python.tar.gz): located, optionally downloaded, read safely.

`load_cifar10(path)` takes the .tar.gz, or a folder holding it or the extracted cifar-10-batches-py
(default: `default_data_dir()`, i.e. $CTMTOOL_DATA or ~/.cache/ctmtool/data). The archive is read in
place, without extracting it. Only with `download=True` is a missing archive fetched (from `url`,
checked against `md5`, then renamed into place); `progress(n)` then receives the bytes as they arrive.
The batches are pickles: they are read with an unpickler that builds only plain containers and numpy
arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import posixpath
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ctmtool.data.base import Dataset
from ctmtool.errors import UserError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META = "batches.meta"
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

Progress = Callable[[int], None] | None


def default_data_dir() -> Path:
    """Where data sets are looked for and downloaded to: $CTMTOOL_DATA, else ~/.cache/ctmtool/data."""
    env = os.environ.get("CTMTOOL_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctmtool" / "data"


class _BatchUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, bytes, numbers and numpy arrays; every other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(data: bytes, where: str) -> dict:
    """A batch file's dict, keys decoded to str."""
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"{where} is not a valid CIFAR-10 batch ({err}); use the official "
                        f"{ARCHIVE}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where} is not a valid CIFAR-10 batch (not a dict); use the official {ARCHIVE}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def download_file(url: str, dest: Path, md5: str, progress: Progress = None) -> Path:
    """Stream `url` to `dest` via a temporary file, check its md5, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            while block := response.read(1 << 20):
                f.write(block)
                digest.update(block)
                if progress is not None:
                    progress(len(block))
        if digest.hexdigest() != md5:
            raise UserError(f"the download of {url} has md5 {digest.hexdigest()}, expected {md5}; try again, "
                            f"or fetch it by hand and save it as {dest}")
        os.replace(tmp, dest)
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise UserError(f"could not download {url} to {dest} ({getattr(err, 'reason', err)}); check the "
                        f"network, or fetch it by hand (md5 {md5}) and save it there") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


ARCHIVE_BYTES = 170498071  # size of the official cifar-10-python.tar.gz (for a progress bar)


def fetch_cifar10(path: str | os.PathLike | None = None, progress: Progress = None, url: str | None = None,
                  md5: str | None = None) -> Path:
    """The CIFAR-10 archive or batch folder at `path` (default data dir), downloaded first when missing:
    streamed to a temporary file, checked against the md5, then renamed into place (`download_file`)."""
    root = Path(path).expanduser() if path is not None else default_data_dir()
    found = _find(root)
    if found is not None:
        return found
    return download_file(url or CIFAR10_URL, _expected_archive(root), md5 or CIFAR10_MD5, progress)


def is_cifar10(path: str | os.PathLike) -> bool:
    """True when `path` is, or holds, the CIFAR-10 archive or its batch folder."""
    return _find(Path(path).expanduser()) is not None


def _find(path: Path) -> Path | None:
    """The batch folder or archive at or inside `path`, if there is one."""
    if path.is_file():
        return path
    for cand in (path / BATCH_DIR, path):
        if (cand / META).is_file():
            return cand
    return path / ARCHIVE if (path / ARCHIVE).is_file() else None


def _expected_archive(path: Path) -> Path:
    return path if path.name.endswith((".tar.gz", ".tgz", ".tar")) else path / ARCHIVE


def _read_files(src: Path, names: list[str]) -> dict[str, bytes]:
    """The named batch files, from the batch folder or straight out of the archive."""
    if src.is_dir():
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise UserError(f"{src} lacks {', '.join(missing)}; re-extract the official {ARCHIVE} there")
        return {n: (src / n).read_bytes() for n in names}
    found = {}
    try:
        with tarfile.open(src, "r:*") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        reason = " ".join(str(err).split())
        raise UserError(f"cannot read {src} as a tar archive ({reason}); it may be incomplete: check that "
                        f"its md5 is {CIFAR10_MD5} or delete it and download it again") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"{src} lacks {', '.join(missing)}; it is not the official {ARCHIVE} (md5 "
                        f"{CIFAR10_MD5})")
    return found


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(uint8 (N, 3, 32, 32) images, int64 labels, file names) of one batch dict."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels is None or len(labels) != len(data):
        raise UserError(f"{where} is not a valid CIFAR-10 batch (expected uint8 data (N, 3072) and N "
                        f"labels); use the official {ARCHIVE}")
    names = batch.get("filenames")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else None
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64), names


def load_cifar10(path: str | os.PathLike | None = None, split: str = "train", download: bool = False,
                 progress: Progress = None, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Dataset:
    """CIFAR-10 `split` ('train' 50k, 'test' 10k) as uint8 (N, 3, 32, 32), labels 0..9; see the module
    notes."""
    if split not in SPLITS:
        raise UserError(f"unknown CIFAR-10 split {split!r}; choose 'train' or 'test'")
    root = Path(path).expanduser() if path is not None else default_data_dir()
    src = _find(root)
    if src is None:
        expected = _expected_archive(root)
        if not download:
            raise UserError(f"the CIFAR-10 archive is missing: expected {expected}; download {url} (md5 "
                            f"{md5}) and save it there, or let ctmtool fetch it (`download`)")
        src = download_file(url, expected, md5, progress)
    names = SPLITS[split]
    files = _read_files(src, names + [META])
    meta = _unpickle(files[META], f"{src}:{META}")
    class_names = ([n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
                   or None)
    parts = [_batch_arrays(_unpickle(files[n], f"{src}:{n}"), f"{src}:{n}") for n in names]
    values = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    items = [f"{split}/{n}" for p in parts for n in p[2]] if all(p[2] is not None for p in parts) else None
    num_classes = max(len(class_names or []), int(labels.max()) + 1 if len(labels) else 0)
    return Dataset(values, labels, num_classes, f"CIFAR-10 {split} ({src})", items, class_names)
