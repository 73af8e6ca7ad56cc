"""load_dataset: dispatch on data.source, path overrides, and refusal of unexpected image shapes."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ctmtool.config import DataConfig, load_preset
from ctmtool.data import load_dataset, load_digits, toy_points
from ctmtool.errors import UserError


def test_toy_preset():
    cfg = load_preset("toy").data
    ds = load_dataset(cfg)
    assert (ds.values.shape == (cfg.n, 2)
            and torch.equal(ds.values, toy_points("gmm", cfg.n, cfg.seed, cfg.gmm).values))
    moons = load_dataset(DataConfig(source="toy", toy="moons", n=100, seed=4))
    assert torch.equal(moons.values, toy_points("moons", 100, 4).values)
    with pytest.raises(UserError, match="holds points .*remove data.resolution"):
        load_dataset(DataConfig(source="toy", toy="moons", n=10, resolution=32))


def test_digits_and_shape_checks():
    ds = load_dataset(DataConfig(source="digits", resolution=8, channels=1))
    assert ds.values.shape == (1437, 1, 8, 8)  # the train split: indices not divisible by 5
    test = load_dataset(DataConfig(source="digits", split="test"))
    assert test.values.shape == (360, 1, 8, 8)
    assert torch.equal(torch.cat([ds.values, test.values]).sort(0).values,
                       load_digits().values.sort(0).values)
    with pytest.raises(UserError,
                       match=r"digits .* has 8x8 images but data.resolution = 32; .*data.resolution = 8"):
        load_dataset(DataConfig(source="digits", resolution=32))
    with pytest.raises(UserError, match="has 1-channel images but data.channels = 3; .*data.channels = 1"):
        load_dataset(DataConfig(source="digits", channels=3))


def test_folder_zip_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        (tmp_path / "pics" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "pics" / f"c{k % 2}"
                                                                              / f"{k}.png")
    cfg = DataConfig(source="folder", path=str(tmp_path / "pics"), resolution=4, channels=3)
    ds = load_dataset(cfg)
    assert ds.values.shape == (3, 3, 4, 4) and ds.labels.tolist() == [0, 0, 1]
    with pytest.raises(UserError, match=r"pics has 4x4 images but data.resolution = 8"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "pics"), resolution=8))
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as zf:
        for f in sorted((tmp_path / "pics").rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path / "pics"))
    zipped = load_dataset(cfg, path=str(tmp_path / "pics.zip"))  # the folder source reads a .zip too
    assert torch.equal(zipped.values, ds.values) and torch.equal(zipped.labels, ds.labels)
    np.savez(tmp_path / "x.npz", samples=ds.values.permute(0, 2, 3, 1).numpy(), labels=ds.labels.numpy())
    npz = load_dataset(DataConfig(source="npz"), path=str(tmp_path / "x.npz"))  # path overrides cfg.path
    assert torch.equal(npz.values, ds.values) and torch.equal(npz.labels, ds.labels)
    with pytest.raises(UserError, match="data.source = 'folder' needs data.path"):
        load_dataset(DataConfig(source="folder"))
    with pytest.raises(UserError, match="data.source = 'npz' needs data.path: an .npz file"):
        load_dataset(DataConfig(source="npz"))


def test_cifar10_source(cifar_archive, tmp_path, monkeypatch):
    path, batches = cifar_archive
    ds = load_dataset(DataConfig(source="cifar10", split="test", resolution=32, channels=3), path=str(path))
    assert np.array_equal(ds.labels.numpy(), batches["test_batch"][1])
    monkeypatch.setenv("CTMTOOL_DATA", str(path.parent))
    assert len(load_dataset(DataConfig(source="cifar10"))) == 100
    monkeypatch.setenv("CTMTOOL_DATA", str(tmp_path / "empty"))
    with pytest.raises(UserError,
                       match="CIFAR-10 archive is missing: expected .*empty/cifar-10-python.tar.gz"):
        load_dataset(DataConfig(source="cifar10"))
