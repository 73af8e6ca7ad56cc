"""FID comparable with published numbers: legacy TF-Inception mode and EDM/ADM reference files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.errors import UserError
from ctmtool.metrics.features import INCEPTION_FILE, LegacyInceptionFeatures, make_extractor
from ctmtool.metrics.fid import check_compatible, compute_stats, dataset_batches, reference_stats
from ctmtool.metrics.legacy import KNOWN_REFS


class _FakeInception(nn.Module):
    """Shaped like the TF-FID TorchScript file: `layers` (299x299 input in [-1, 1]) and forward(x,
    return_features) that resizes uint8-valued images itself (here bilinearly)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 2048))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTMTOOL_CLEANFID_DIR", str(tmp_path / "no-cleanfid"))
    monkeypatch.setenv("CTMTOOL_OFFLINE", "1")
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_FakeInception().eval()), str(tmp_path / INCEPTION_FILE))
    return tmp_path


def _images(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_legacy_mode_feeds_the_network_unresized_uint8_values(cache):
    ex = make_extractor("inception-legacy", cache=cache)
    assert (isinstance(ex, LegacyInceptionFeatures) and ex.mode == "legacy_tensorflow"
            and ex.name == "inception")
    x = _images()
    with torch.no_grad():
        want = ex.net(x.float(), return_features=True)
    assert torch.equal(ex(x), want)
    clean = make_extractor("inception", cache=cache)
    assert clean.mode == "clean" and not torch.allclose(clean(x), want)  # PIL bicubic first: other features


def test_missing_inception_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CTMTOOL_CLEANFID_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("CTMTOOL_OFFLINE", "1")
    with pytest.raises(UserError, match=INCEPTION_FILE):
        make_extractor("inception-legacy", cache=tmp_path)


def test_edm_reference_npz(cache, tmp_path):
    ex = make_extractor("inception-legacy", cache=cache)
    feats = np.random.default_rng(0).normal(size=(50, 2048))
    ref_path = tmp_path / "cifar10-32x32.npz"
    np.savez(ref_path, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))  # EDM's layout: mu, sigma only
    ref = reference_stats(str(ref_path), ex)
    assert ref.mode == "legacy_tensorflow" and np.array_equal(ref.mu, feats.mean(0))
    stats = compute_stats(dataset_batches(_dataset(), 4), ex)
    # the samples' legacy statistics may be compared with it (sqrtm of 2048 dims is slow)
    check_compatible(stats, ref)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(UserError, match="not 2048-dim"):
        reference_stats(str(bad), ex)


def _dataset():
    from ctmtool.data.base import Dataset

    return Dataset(_images(8, seed=1))


def test_adm_reference_batch_of_images(cache, tmp_path):
    ex = make_extractor("inception-legacy", cache=cache)
    imgs = _images(5, seed=2)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, arr_0=imgs.permute(0, 2, 3, 1).numpy())  # ADM: NHWC uint8 under arr_0
    ref = reference_stats(str(path), ex)
    from ctmtool.data.base import Dataset

    want = compute_stats(dataset_batches(Dataset(imgs), 256), ex)
    assert ref.n == 5 and np.allclose(ref.mu, want.mu) and np.allclose(ref.sigma, want.sigma)


def test_missing_known_reference_names_its_source(cache):
    ex = make_extractor("inception-legacy", cache=cache)
    with pytest.raises(UserError, match=KNOWN_REFS["cifar10-32x32.npz"].replace(".", r"\.")):
        reference_stats("/nowhere/cifar10-32x32.npz", ex)
