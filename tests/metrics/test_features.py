"""Feature networks: TorchScript files, the clean-fid Inception pipeline, and finding/downloading its
weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ctmtool.errors import UserError
from ctmtool.metrics import features as F

FD_A = Path(__file__).resolve().parents[3] / "shared" / "data" / "fd-cifar10" / "fd_a.pt"


class _Tiny(torch.nn.Module):
    """A small feature net of any input size: conv, ReLU, global mean -> (B, 8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.float() / 255)).mean((2, 3))


class _FakeInception(torch.nn.Module):
    """Shaped like clean-fid's TorchScript Inception: `layers` maps normalised 299x299 RGB to 2048
    features."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(),
                                          torch.nn.Linear(192, 2048))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _save(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def _images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    """Point the cache and clean-fid's folder at empty folders and turn downloads off."""
    monkeypatch.setenv("CTMTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CTMTOOL_CLEANFID_DIR", str(tmp_path / "cleanfid"))
    monkeypatch.setenv("CTMTOOL_OFFLINE", "1")
    return tmp_path


def test_torchscript_extractor_records_hash_and_gives_features(tmp_path):
    path = _save(_Tiny(), tmp_path / "tiny.pt")
    ex = F.make_extractor(str(path), "cpu")
    assert ex.name == "tiny" and ex.mode == "native"
    assert ex.sha256 == F.sha256_file(path) and len(ex.short_sha) == 12
    f = ex(_images(5))
    assert f.shape == (5, 8) and f.dtype == torch.float32
    torch.testing.assert_close(f, ex.net(_images(5).float()))


def test_extractor_failure_names_the_image_size(tmp_path):
    ex = F.make_extractor(str(_save(_Tiny(), tmp_path / "tiny.pt")), "cpu")
    with pytest.raises(UserError, match=r"tiny.pt failed on 1x16x16"):
        ex(_images(2, channels=1))


def test_missing_or_bad_feature_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither 'inception' nor an existing file"):
        F.make_extractor(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(UserError, match="cannot load feature network"):
        F.make_extractor(str(bad))


@pytest.mark.skipif(not FD_A.is_file(), reason="shared fd_a.pt not available")
def test_fd_a_gives_256_features_on_32px_images():
    ex = F.make_extractor(str(FD_A), "cpu")
    assert ex.short_sha == "a64751388b36"
    assert ex(_images(4, size=32)).shape == (4, 256)


def test_offline_without_inception_names_file_places_and_source(no_inception):
    with pytest.raises(UserError) as err:
        F.make_extractor("inception", "cpu")
    msg = str(err.value)
    assert F.INCEPTION_FILE in msg and F.INCEPTION_URL in msg
    assert str(no_inception / "cache" / F.INCEPTION_FILE) in msg
    assert str(no_inception / "cleanfid" / F.INCEPTION_FILE) in msg


def test_failed_download_is_a_user_error(no_inception, monkeypatch):
    monkeypatch.delenv("CTMTOOL_OFFLINE")
    monkeypatch.setattr(F, "INCEPTION_URL", "http://127.0.0.1:9/inception-2015-12-05.pt")  # refused at once
    with pytest.raises(UserError, match="downloading them failed"):
        F.find_inception()
    assert not any((no_inception / "cache").glob("*"))  # no partial file left


def test_inception_is_found_in_cache_then_cleanfid_folder(no_inception):
    (no_inception / "cleanfid").mkdir()
    in_tmp = no_inception / "cleanfid" / F.INCEPTION_FILE
    in_tmp.write_bytes(b"x")
    assert F.find_inception() == in_tmp
    (no_inception / "cache").mkdir()
    cached = no_inception / "cache" / F.INCEPTION_FILE
    cached.write_bytes(b"x")
    assert F.find_inception() == cached
    assert F.find_inception(cache=no_inception / "cleanfid") == in_tmp  # --cache-dir wins over $CTMTOOL_CACHE


def test_download_file_reports_progress_and_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"a" * (3 << 20))
    seen = []

    from contextlib import contextmanager

    @contextmanager
    def progress(total, description, unit=""):
        seen.append(total)
        yield lambda n=1, status="": seen.append(n)

    dest = F.download_file(src.as_uri(), tmp_path / "out" / "dest.bin", progress)
    assert dest.read_bytes() == src.read_bytes()
    assert sum(seen[1:]) == pytest.approx(3.0) and not list((tmp_path / "out").glob(".*part"))


def test_inception_pipeline_uses_clean_fid_resize(tmp_path, no_inception):
    resize_mod = pytest.importorskip("cleanfid.resize")
    (no_inception / "cache").mkdir()
    _save(_FakeInception(), no_inception / "cache" / F.INCEPTION_FILE)
    ex = F.make_extractor("inception", "cpu")
    assert isinstance(ex, F.InceptionFeatures) and ex.mode == "clean" and ex.name == "inception"
    imgs = _images(3, size=20)
    resize = resize_mod.make_resizer("PIL", False, "bicubic", (299, 299))
    expect = np.stack([resize(a) for a in imgs.permute(0, 2, 3, 1).numpy()]).transpose(0, 3, 1, 2)
    resized = ex._resized(imgs)
    assert resized.shape == (3, 3, 299, 299)
    np.testing.assert_array_equal(resized.numpy(), expect)
    f = ex(imgs)
    torch.testing.assert_close(f, ex.net.layers((torch.from_numpy(expect) - 128) / 128))
    grey = ex(imgs[:, :1])  # grey images become RGB
    torch.testing.assert_close(grey, ex(imgs[:, :1].expand(-1, 3, -1, -1).contiguous()))


def test_inception_file_without_layers_is_refused(no_inception):
    pytest.importorskip("cleanfid.resize")
    (no_inception / "cache").mkdir()
    _save(_Tiny(), no_inception / "cache" / F.INCEPTION_FILE)
    with pytest.raises(UserError, match="not clean-fid's Inception"):
        F.make_extractor("inception", "cpu")


class _Mixed(torch.nn.Module):
    """An Inception block: a 1x1 `conv` branch and another, concatenated (as mixed_6 with its `conv`
    branch)."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, 9, 1)
        self.other = torch.nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.conv(x)), torch.relu(self.other(x))], 1)


class _LayeredInception(torch.nn.Module):
    """The layout the IS / sFID heads read: `layers` with a `mixed_6` child, an `output` layer of 1008
    logits."""

    def __init__(self):
        super().__init__()
        from collections import OrderedDict

        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(OrderedDict([
            ("conv", torch.nn.Conv2d(3, 4, 3, stride=16)), ("mixed_6", _Mixed(4)),
            ("pool", torch.nn.AdaptiveAvgPool2d(1)), ("expand", torch.nn.Conv2d(12, 2048, 1))]))
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_heads_read_mixed_6_conv_and_the_unbiased_logits(tmp_path, no_inception):
    """On a stand-in of the Inception file's layout (the real file is not on this machine)."""
    pytest.importorskip("cleanfid.resize")
    (no_inception / "cache").mkdir()
    _save(_LayeredInception(), no_inception / "cache" / F.INCEPTION_FILE)
    ex = F.make_extractor("inception", "cpu")
    imgs = _images(2, size=20)
    out = ex.heads(imgs, ("pool", "logits", "spatial"))
    x = (ex._resized(imgs) - 128) / 128
    with torch.no_grad():
        h = ex.net.layers.conv(x)
        spatial = ex.net.layers.mixed_6.conv(h)[:, :F.SPATIAL_CHANNELS]
        pool = ex.net.layers(x).reshape(2, 2048)
    torch.testing.assert_close(out["spatial"], spatial.reshape(2, -1))
    torch.testing.assert_close(out["pool"], pool)
    torch.testing.assert_close(out["logits"], pool @ ex.net.output.weight.T)  # no output bias
    torch.testing.assert_close(out["pool"], ex(imgs))
