"""ImageNet 64x64 source: official npz batches (memory-mapped, labels remapped), class folders, shards,
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctmtool.config import DataConfig
from ctmtool.data import load_dataset
from ctmtool.data.imagenet64 import adm_resize, load_imagenet64, read_class_map
from ctmtool.errors import UserError

WNIDS = ["n03000000", "n01000000", "n04000000", "n02000000"]  # devkit order: labels 1..4; sorted: 1, 3, 0, 2


def _write_batches(root, sizes=(5, 3), compressed=(False, True), seed=0):
    """train_data_batch_<k>.npz with data (N, 12288) uint8 CHW-flattened and 1-based labels; returns (images,
    labels)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k, (n, comp) in enumerate(zip(sizes, compressed, strict=True), 1):
        chw = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
        lab = rng.integers(1, len(WNIDS) + 1, n)
        (np.savez_compressed if comp else np.savez)(root / f"train_data_batch_{k}.npz",
                                                    data=chw.reshape(n, -1), labels=lab, mean=np.zeros(12288))
        images.append(chw)
        labels.append(lab)
    (root / "map_clsloc.txt").write_text("".join(f"{w} {i} name_{i}\n" for i, w in enumerate(WNIDS, 1)))
    return np.concatenate(images), np.concatenate(labels)


def test_npz_batches_read_in_place_with_sorted_synset_labels(tmp_path):
    images, labels = _write_batches(tmp_path)
    ds = load_imagenet64(tmp_path)
    assert len(ds) == 8 and ds.shape == (3, 64, 64) and ds.is_image and ds.num_classes == 4
    assert ds.class_names == sorted(WNIDS)
    sorted_index = {w: i for i, w in enumerate(sorted(WNIDS))}
    expect = torch.tensor([sorted_index[WNIDS[k - 1]] for k in labels])
    assert torch.equal(ds.labels, expect)
    idx = torch.tensor([7, 0, 5, 2, 5])  # across both files, unsorted, repeated
    assert torch.equal(ds.uint8(idx), torch.from_numpy(images[idx.numpy()]))
    x, y = ds.get(idx)
    torch.testing.assert_close(x, torch.from_numpy(images[idx.numpy()]).float() / 127.5 - 1)
    assert torch.equal(y, expect[idx])
    cache = tmp_path / ".ctmtool-cache"
    assert [p.name for p in cache.iterdir()] == ["train_data_batch_2.data.npy"]  # only the compressed one


def test_load_dataset_and_shards(tmp_path):
    _write_batches(tmp_path, sizes=(4, 3))
    ds = load_dataset(DataConfig(source="imagenet64", path=str(tmp_path), resolution=64, channels=3))
    parts = [ds.shard(r, 3) for r in range(3)]
    assert sum(len(p) for p in parts) == len(ds) == 7
    got = torch.cat([p.uint8(torch.arange(len(p))) for p in parts])
    want = torch.cat([ds.uint8(torch.arange(r, 7, 3)) for r in range(3)])
    assert torch.equal(got, want)
    assert torch.equal(torch.cat([p.labels for p in parts]), torch.cat([ds.labels[r::3] for r in range(3)]))


def test_missing_or_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CTMTOOL_DATA", str(tmp_path / "cache"))
    with pytest.raises(UserError,
                       match=r"no ImageNet 64x64 data at .*cache/imagenet64.*train_data_batch_\*\.npz"):
        load_imagenet64()
    _write_batches(tmp_path)
    (tmp_path / "map_clsloc.txt").unlink()
    with pytest.raises(UserError, match=r"map_clsloc\.txt"):
        load_imagenet64(tmp_path)
    (tmp_path / "map_clsloc.txt").write_text("n01 1 a\nn02 3 b\n")
    with pytest.raises(UserError, match="labels 1..K once"):
        read_class_map(tmp_path / "map_clsloc.txt")
    small = tmp_path / "small"
    small.mkdir()
    np.savez(small / "train_data_batch_1.npz", data=np.zeros((2, 3072), np.uint8), labels=np.ones(2, int))
    (small / "map_clsloc.txt").write_text("n01 1 a\n")
    with pytest.raises(UserError, match="32x32 or another variant"):
        load_imagenet64(small)
    (small / "train_data_batch_1.npz").write_bytes(b"truncated")
    with pytest.raises(UserError, match="download it again"):
        load_imagenet64(small)


def test_class_folders_decoded_on_demand_and_resized_like_adm(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    for c in ("n02", "n01"):
        (tmp_path / c).mkdir()
    Image.fromarray(small).save(tmp_path / "n02" / "a.png")
    Image.fromarray(big).save(tmp_path / "n01" / "b.png")
    (tmp_path / "n01" / "notes.txt").write_text("ignored")
    ds = load_imagenet64(tmp_path)
    assert len(ds) == 2 and ds.class_names == ["n01", "n02"] and ds.labels.tolist() == [0, 1]
    x = ds.uint8(torch.tensor([1, 0]))
    assert torch.equal(x[0], torch.from_numpy(small.transpose(2, 0, 1)))
    want = adm_resize(Image.fromarray(big))
    assert want.shape == (64, 64, 3) and torch.equal(x[1], torch.from_numpy(want.transpose(2, 0, 1).copy()))
    (tmp_path / "n02" / "broken.jpg").write_bytes(b"junk")
    with pytest.raises(UserError, match="broken.jpg"):
        load_imagenet64(tmp_path).uint8(torch.tensor([2]))


def test_adm_resize_box_halves_then_bicubic_then_centre_crops():
    # W 300, H 140
    im = Image.fromarray(np.random.default_rng(2).integers(0, 256, (140, 300, 3), dtype=np.uint8))
    half = im.resize((150, 70), resample=Image.BOX)  # 140 >= 2 * 64: halve once; 70 < 128 stops
    scaled = np.asarray(half.resize((round(150 * 64 / 70), 64), resample=Image.BICUBIC))
    left = (scaled.shape[1] - 64) // 2
    assert np.array_equal(adm_resize(im), scaled[:, left:left + 64])
