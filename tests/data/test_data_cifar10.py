"""CIFAR-10 python batches: exact pixel layout, every accepted location, safe unpickling, download checks."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ctmtool.data.cifar10 import CIFAR10_MD5, CIFAR10_URL, default_data_dir, load_cifar10
from ctmtool.errors import UserError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # images per batch in the test archive


def _extract_all(tar: tarfile.TarFile, dest) -> None:
    """extractall with the safe 'data' filter where this Python has it (3.11.4+), plain otherwise."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:
        tar.extractall(dest)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_train_and_test_round_trip(cifar_archive):
    path, batches = cifar_archive
    ds = load_cifar10(path)
    assert ds.values.shape == (5 * PER_BATCH, 3, 32, 32) and ds.values.dtype == torch.uint8
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), labels)
    # row layout: 1024 R then 1024 G then 1024 B, each plane row-major 32x32
    for k, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 7), (99, 2, 31, 31), (41, 2, 0, 31), (57, 0, 31, 0)]:
        assert ds.values[k, c, y, x] == data[k, c * 1024 + y * 32 + x]
    assert np.array_equal(ds.values.numpy().reshape(len(ds), -1), data)
    assert ds.class_names == CLASSES and ds.num_classes == 10
    assert ds.items[:2] == ["train/data_batch_1_0.png", "train/data_batch_1_1.png"]
    test = load_cifar10(path, split="test")
    assert np.array_equal(test.values.numpy().reshape(PER_BATCH, -1), batches["test_batch"][0])
    assert np.array_equal(test.labels.numpy(), batches["test_batch"][1])


def test_every_location(cifar_archive, tmp_path, monkeypatch):
    path, _ = cifar_archive
    ref = load_cifar10(path).values
    assert torch.equal(load_cifar10(path.parent).values, ref)  # folder holding the archive
    with tarfile.open(path) as tar:
        _extract_all(tar, tmp_path / "x")
    assert torch.equal(load_cifar10(tmp_path / "x").values, ref)  # folder holding cifar-10-batches-py
    assert torch.equal(load_cifar10(tmp_path / "x" / "cifar-10-batches-py").values, ref)  # the batches
    monkeypatch.setenv("CTMTOOL_DATA", str(path.parent))
    assert default_data_dir() == path.parent
    assert torch.equal(load_cifar10(None).values, ref)


def test_default_data_dir_without_env(monkeypatch):
    monkeypatch.delenv("CTMTOOL_DATA", raising=False)
    assert default_data_dir() == Path.home() / ".cache" / "ctmtool" / "data"


def test_missing_archive_message(tmp_path):
    with pytest.raises(UserError) as err:
        load_cifar10(tmp_path / "nowhere")
    msg = str(err.value)
    assert "missing" in msg and str(tmp_path / "nowhere" / "cifar-10-python.tar.gz") in msg
    assert CIFAR10_URL in msg and CIFAR10_MD5 in msg and "\n" not in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created without download=True


def test_download_from_local_url(cifar_archive, tmp_path):
    src, _ = cifar_archive
    seen = []
    dest_dir = tmp_path / "cache"
    ds = load_cifar10(dest_dir, download=True, progress=seen.append, url=src.as_uri(), md5=md5_of(src))
    assert (dest_dir / "cifar-10-python.tar.gz").read_bytes() == src.read_bytes()
    assert sum(seen) == src.stat().st_size and len(ds) == 5 * PER_BATCH
    assert os.listdir(dest_dir) == ["cifar-10-python.tar.gz"]  # no temporary files left
    again = load_cifar10(dest_dir, url="file:///nonexistent", md5="0" * 32)  # present: no download
    assert torch.equal(again.values, ds.values)


def test_download_bad_md5_and_unreachable(cifar_archive, tmp_path):
    src, _ = cifar_archive
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match=f"md5 {md5_of(src)}, expected {'0' * 32}"):
        load_cifar10(dest, download=True, url=src.as_uri(), md5="0" * 32)
    assert os.listdir(dest.parent) == []  # neither the archive nor a partial file stays
    with pytest.raises(UserError, match="could not download file:///nonexistent/x.tar.gz"):
        load_cifar10(dest, download=True, url="file:///nonexistent/x.tar.gz")
    assert os.listdir(dest.parent) == []


def test_refuses_code_in_pickles(tmp_path, make_cifar_archive):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batches = tmp_path / "b" / "cifar-10-batches-py"
    make_cifar_archive(tmp_path / "src.tar.gz")
    with tarfile.open(tmp_path / "src.tar.gz") as tar:
        _extract_all(tar, tmp_path / "b")
    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_3 is not a valid CIFAR-10 batch \(refusing to load"):
        load_cifar10(batches)
    assert not marker.exists()


def test_bad_archives(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match=f"cannot read .* as a tar archive .*md5 .*{CIFAR10_MD5}") as err:
        load_cifar10(tmp_path)
    assert "\n" not in str(err.value)
    with tarfile.open(tmp_path / "partial.tar.gz", "w:gz") as tar:
        blob = pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}, protocol=4)
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(UserError, match="lacks data_batch_1, .*data_batch_5"):
        load_cifar10(tmp_path / "partial.tar.gz")
    with pytest.raises(UserError, match="unknown CIFAR-10 split 'val'"):
        load_cifar10(tmp_path, split="val")
