"""Fixtures for the data tests: a tiny CIFAR-10 archive in the official format."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20


class Py2StylePickler(pickle._Pickler):
    """Writes protocol 2 the way Python 2 did: str and bytes as byte strings, numpy under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def build_cifar_archive(dest: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a cifar-10-python.tar.gz with PER_BATCH images per batch; return {batch: (data, labels)}."""
    rng = np.random.default_rng(seed)
    batches = {}
    files = {"batches.meta": py2_pickle({"label_names": CLASSES, "num_cases_per_batch": PER_BATCH})}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_BATCH)
        batches[name] = (data, labels)
        files[name] = py2_pickle({"batch_label": f"{name} of 6", "labels": [int(v) for v in labels],
                                  "data": data, "filenames": [f"{name}_{k}.png" for k in range(PER_BATCH)]})
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return batches


@pytest.fixture
def make_cifar_archive():
    """The archive builder, for tests that need one at a particular place."""
    return build_cifar_archive


@pytest.fixture
def cifar_archive(tmp_path) -> tuple[Path, dict]:
    """(path of a tiny official-format archive, its batches)."""
    path = tmp_path / "src" / "cifar-10-python.tar.gz"
    return path, build_cifar_archive(path)
