"""Image folders, zips, npz files and single images: exact pixels, labels from folders, clear errors."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctmtool.data import images
from ctmtool.data.images import load_image_folder, load_image_zip, load_images, load_npz
from ctmtool.errors import UserError

CIFAR_JPEG = (Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg"
              / "cifar10-jpeg-q75.tar.gz")


def rand_image(seed: int, size=(6, 5), channels=3) -> np.ndarray:
    """uint8 (H, W, C) noise; size is (width, height) as PIL counts it."""
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array[..., None] if array.ndim == 2 else array)).permute(2, 0, 1)


def make_class_folder(root: Path) -> dict[str, np.ndarray]:
    """Two classes, b before a on disk order is irrelevant: labels follow sorted names."""
    arrays = {}
    for k, rel in enumerate(["cats/1.png", "cats/0.png", "birds/x.png", "birds/deep/y.bmp"]):
        arrays[rel] = save(root / rel, rand_image(k))
    (root / "cats" / "notes.txt").write_text("not an image")
    save(root / "cats" / ".hidden.png", rand_image(99, size=(3, 3)))  # hidden: ignored
    return arrays


def test_folder_with_classes(tmp_path):
    arrays = make_class_folder(tmp_path)
    ds = load_image_folder(tmp_path)
    order = ["birds/deep/y.bmp", "birds/x.png", "cats/0.png", "cats/1.png"]
    assert ds.values.shape == (4, 3, 5, 6) and ds.values.dtype == torch.uint8
    assert ds.items == [str(tmp_path / r) for r in order]
    for k, rel in enumerate(order):
        assert torch.equal(ds.values[k], chw(arrays[rel]))
    assert ds.class_names == ["birds", "cats"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.labels.dtype == torch.int64


def test_flat_or_mixed_folder_has_no_labels(tmp_path):
    save(tmp_path / "a.png", rand_image(0))
    save(tmp_path / "b.jpg", rand_image(1))
    ds = load_image_folder(tmp_path)
    assert len(ds) == 2 and ds.labels is None and ds.num_classes == 0 and ds.class_names is None
    save(tmp_path / "sub" / "c.png", rand_image(2))
    assert load_image_folder(tmp_path).labels is None


def test_modes(tmp_path):
    grey = save(tmp_path / "g" / "0.png", rand_image(0, channels=1))
    ds = load_images(tmp_path / "g")
    assert ds.shape == (1, 5, 6) and torch.equal(ds.values[0], chw(grey))
    rgba = rand_image(1, channels=4)
    save(tmp_path / "g" / "1.png", rgba)
    pal = Image.fromarray(rand_image(2)).convert("P")
    pal.save(tmp_path / "g" / "2.png")
    ds = load_images(tmp_path / "g")  # a colour file makes everything RGB
    assert ds.shape == (3, 5, 6)
    assert torch.equal(ds.values[0], chw(np.repeat(grey[..., None], 3, axis=2)))
    assert torch.equal(ds.values[1], chw(rgba[..., :3]))
    assert torch.equal(ds.values[2], chw(np.asarray(pal.convert("RGB"))))


def test_sixteen_bit_grey_keeps_top_byte(tmp_path):
    a16 = np.random.default_rng(0).integers(0, 65536, (4, 4), dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "x.png")
    ds = load_images(tmp_path / "x.png")
    assert torch.equal(ds.values[0, 0], torch.from_numpy((a16 >> 8).astype(np.uint8)))


def test_single_image_file(tmp_path):
    a = save(tmp_path / "one.webp", rand_image(0))
    Image.fromarray(a).save(tmp_path / "one.png")
    ds = load_images(tmp_path / "one.png")
    assert len(ds) == 1 and torch.equal(ds.values[0], chw(a)) and ds.items == [str(tmp_path / "one.png")]


def test_size_mismatch_names_both_files(tmp_path):
    save(tmp_path / "a.png", rand_image(0, size=(6, 5)))
    save(tmp_path / "b.png", rand_image(1, size=(7, 5)))
    with pytest.raises(UserError, match=r"b\.png is 7x5 but .*a\.png is 6x5") as err:
        load_image_folder(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"definitely not a png", "truncated"])
def test_corrupt_file_is_named(tmp_path, content):
    save(tmp_path / "a.png", rand_image(0))
    if content == "truncated":
        Image.fromarray(rand_image(1, size=(64, 64))).save(tmp_path / "bad.jpg", quality=95)
        data = (tmp_path / "bad.jpg").read_bytes()
        (tmp_path / "bad.jpg").write_bytes(data[: len(data) // 2])
        bad = "bad.jpg"
    else:
        (tmp_path / "bad.png").write_bytes(content)
        bad = "bad.png"
    with pytest.raises(UserError, match=rf"cannot read image .*{bad}"):
        load_image_folder(tmp_path)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"no images found in .*\.png.*\.webp"):
        load_image_folder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_images(tmp_path / "nope")
    with pytest.raises(UserError, match="not a folder, .zip, .npz or image file"):
        load_images(tmp_path / "sub" / "readme.txt")


def test_zip_matches_folder(tmp_path):
    arrays = make_class_folder(tmp_path / "pics")
    zpath = tmp_path / "pics.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((tmp_path / "pics").rglob("*")):
            zf.write(f, Path("pics") / f.relative_to(tmp_path / "pics"))  # one top folder, as `zip -r` makes
        zf.writestr("__MACOSX/pics/cats/._0.png", b"resource fork")
    ds, ref = load_image_zip(zpath), load_image_folder(tmp_path / "pics")
    assert torch.equal(ds.values, ref.values) and torch.equal(ds.labels, ref.labels)
    assert ds.class_names == ["birds", "cats"] and ds.items[0] == f"{zpath}:pics/birds/deep/y.bmp"
    assert torch.equal(load_images(zpath).values, ds.values)
    assert len(arrays) == len(ds)


def test_zip_errors(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(UserError, match="cannot open .*bad.zip as a zip archive"):
        load_image_zip(tmp_path / "bad.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(UserError, match="no images found in .*empty.zip"):
        load_images(tmp_path / "empty.zip")
    with zipfile.ZipFile(tmp_path / "corrupt.zip", "w") as zf:
        zf.writestr("a.png", b"garbage")
    with pytest.raises(UserError, match=r"cannot read image .*corrupt\.zip:a\.png"):
        load_images(tmp_path / "corrupt.zip")


def test_npz_layouts(tmp_path):
    nhwc = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2])
    np.savez(tmp_path / "a.npz", samples=nhwc, labels=labels)
    ds = load_npz(tmp_path / "a.npz")
    assert torch.equal(ds.values, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == [0, 2, 1, 2] and ds.labels.dtype == torch.int64 and ds.num_classes == 3
    np.savez(tmp_path / "b.npz", samples=nhwc.transpose(0, 3, 1, 2))  # NCHW
    assert torch.equal(load_images(tmp_path / "b.npz").values, ds.values)
    np.savez(tmp_path / "c.npz", samples=nhwc[..., 0])  # NHW grey
    assert torch.equal(load_npz(tmp_path / "c.npz").values, ds.values[:, :1])
    pts = np.random.default_rng(1).normal(size=(10, 2))
    np.savez(tmp_path / "d.npz", samples=pts)
    p = load_npz(tmp_path / "d.npz")
    assert (p.values.dtype == torch.float32 and not p.is_image
            and torch.allclose(p.values.double(), torch.from_numpy(pts)))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="has no 'samples' array .*images"):
        load_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", samples=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(UserError, match="save images as uint8"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", samples=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 1, 2]))
    with pytest.raises(UserError, match="'labels' must be 2 non-negative integers"):
        load_npz(tmp_path / "c.npz")
    (tmp_path / "d.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read .*d.npz as an .npz"):
        load_npz(tmp_path / "d.npz")


def test_parallel_decode_and_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "CHUNK", 3)  # 20 images -> 7 tasks: the process pool runs
    arrays = [save(tmp_path / "c" / f"{k:02d}.png", rand_image(k)) for k in range(20)]
    seen = []
    ds = load_image_folder(tmp_path, progress=seen.append)
    assert sum(seen) == 20 and len(seen) == 7
    assert torch.equal(ds.values, torch.stack([chw(a) for a in arrays]))
    for workers in (1, 3):  # threads and processes agree
        out = images.decode_images([(str(f), str(f), None) for f in ds.items], workers=workers)
        assert np.array_equal(out, ds.values.numpy())
    (tmp_path / "c" / "13.png").write_bytes(b"oops")
    with pytest.raises(UserError, match=r"cannot read image .*13\.png"):
        load_image_folder(tmp_path)


def test_real_cifar10_jpeg_subset(tmp_path):
    """A few real CIFAR-10 JPEGs, streamed out of the shared archive, read as a class folder."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG archive not found at {CIFAR_JPEG}")
    wanted, counts = ("airplane", "automobile", "bird"), {}
    with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
        for m in tar:  # sorted by name: test/airplane, test/automobile, test/bird come first
            parts = m.name.split("/")
            if m.isfile() and parts[1:2] == ["test"] and parts[2] in wanted and counts.get(parts[2], 0) < 30:
                counts[parts[2]] = counts.get(parts[2], 0) + 1
                dest = tmp_path / parts[2] / parts[3]
                dest.parent.mkdir(exist_ok=True)
                with tar.extractfile(m) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            if sum(counts.values()) == 90 or (parts[1:2] == ["train"]):
                break
    assert counts == dict.fromkeys(wanted, 30)
    ds = load_images(tmp_path)
    assert ds.values.shape == (90, 3, 32, 32) and ds.class_names == list(wanted)
    assert ds.labels.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    first = np.asarray(Image.open(tmp_path / "airplane" / "0000.jpg").convert("RGB"))
    assert torch.equal(ds.values[0], chw(first))
    assert 60 < ds.values.float().mean() < 200  # real photos, not blank
