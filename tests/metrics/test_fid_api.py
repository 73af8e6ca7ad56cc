"""The evaluation API: statistics of images and of a model's samples, saving/loading, references, FID
dicts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.metrics import features as F
from ctmtool.metrics import fid as M


class _Tiny(torch.nn.Module):
    """A small feature net of any input size: conv, ReLU, global mean -> (B, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.float() / 255 - 0.5)).mean((2, 3))


@pytest.fixture
def extractor(tmp_path) -> F.FeatureExtractor:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Tiny().eval()), str(path))
    return F.make_extractor(str(path), "cpu")


def _images(n: int, size: int = 12, seed: int = 0, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 200, (n, 3, size, size), generator=g) + shift).clamp(0, 255).to(torch.uint8)


def test_compute_stats_matches_numpy_on_the_features(extractor):
    imgs = _images(50)
    stats = M.compute_stats(imgs.split(16), extractor, "cpu", keep_features=True, source="test")
    f = extractor(imgs).double().numpy()
    assert stats.n == 50 and stats.features == "tiny" and stats.mode == "native"
    np.testing.assert_allclose(stats.mu, f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(stats.feats, f.astype(np.float32), rtol=1e-6)


def test_float_images_are_quantised_like_saved_pngs(extractor):
    imgs = _images(20)
    as_float = [x.float() / 127.5 - 1 for x in imgs.split(7)]
    a = M.compute_stats(imgs.split(7), extractor)
    b = M.compute_stats(as_float, extractor)
    np.testing.assert_array_equal(a.mu, b.mu)


def test_stats_round_trip_with_and_without_features(extractor, tmp_path):
    stats = M.compute_stats([_images(30)], extractor, keep_features=True, source="somewhere")
    M.save_stats(stats, tmp_path / "s.npz")
    back = M.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.feats, stats.feats)
    assert (back.n, back.features, back.features_sha256, back.mode, back.source) == \
        (30, "tiny", extractor.sha256, "native", "somewhere")
    M.save_stats(stats, tmp_path / "s.npz", keep_features=False)  # overwrite in place
    assert M.load_stats(tmp_path / "s.npz").feats is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "tiny.pt"]  # no temporary file left


def test_clean_fid_style_stats_file_loads_with_defaults(tmp_path):
    np.savez(tmp_path / "c.npz", mu=np.zeros(4), sigma=np.eye(4))
    s = M.load_stats(tmp_path / "c.npz", n=50000)
    assert (s.features, s.mode, s.n, s.features_sha256) == ("inception", "clean", 50000, "")


def test_non_stats_npz_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", samples=np.zeros((2, 4, 4, 3), np.uint8))
    assert not M.is_stats_file(tmp_path / "x.npz")
    with pytest.raises(UserError, match="not a statistics file"):
        M.load_stats(tmp_path / "x.npz")


def test_fid_from_stats_fields_note_and_kid(extractor):
    a = M.compute_stats([_images(200, seed=1)], extractor, keep_features=True)
    b = M.compute_stats([_images(200, seed=2)], extractor, keep_features=True)
    c = M.compute_stats([_images(200, seed=3, shift=60)], extractor, keep_features=True)
    near = M.fid_from_stats(a, b, kid_score=True, kid_subset_size=100, seed=0)
    far = M.fid_from_stats(c, b, kid_score=True, kid_subset_size=100, seed=0)
    assert {"fid", "n", "features", "features_sha256", "mode", "n_ref", "seed", "kid", "kid_std",
            "note"} <= set(near)
    assert near["n"] == 200 and near["n_ref"] == 200 and near["features_sha256"] == extractor.short_sha
    assert 0 <= near["fid"] < far["fid"] and near["kid"] < far["kid"]
    assert "biased upward" in near["note"]
    a.feats = None
    with pytest.raises(UserError, match="KID needs raw features"):
        M.fid_from_stats(a, b, kid_score=True)


def test_statistics_of_different_feature_networks_are_not_compared(extractor):
    a = M.compute_stats([_images(20)], extractor)
    other = M.Stats(a.mu, a.sigma, 20, "fd_a", "f" * 64, "native")
    with pytest.raises(UserError, match="recompute the reference"):
        M.fid_from_stats(a, other)


def test_named_reference_lookup(extractor, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"expected .*cifar10-train_tiny.npz.*fid stats"):
        M.reference_stats("cifar10-train", extractor, cache=cache)
    stats = M.compute_stats([_images(20)], extractor)
    M.save_stats(stats, M.named_stats_path("cifar10-train", extractor, cache))
    got = M.reference_stats("cifar10-train", extractor, cache=cache)
    np.testing.assert_array_equal(got.mu, stats.mu)


def test_reference_from_images_and_from_stats_file(extractor, tmp_path):
    imgs = _images(40)
    np.savez(tmp_path / "ref.npz", samples=imgs.permute(0, 2, 3, 1).numpy())
    from_images = M.reference_stats(str(tmp_path / "ref.npz"), extractor)
    M.save_stats(from_images, tmp_path / "stats.npz")
    from_file = M.reference_stats(str(tmp_path / "stats.npz"), extractor)
    np.testing.assert_array_equal(from_images.sigma, from_file.sigma)
    with pytest.raises(UserError, match="does not exist"):
        M.reference_stats(str(tmp_path / "missing" / "x.npz"), extractor)


def test_fid_from_data_subset_is_seeded(extractor):
    ds = Dataset(_images(60))
    ref = M.compute_stats([_images(60, seed=5)], extractor)
    r1 = M.fid_from_data(ds, ref, extractor, n=30, seed=1, batch=8)
    r2 = M.fid_from_data(ds, ref, extractor, n=30, seed=1, batch=16)
    r3 = M.fid_from_data(ds, ref, extractor, n=30, seed=2, batch=8)
    assert r1["n"] == 30 and r1["fid"] == pytest.approx(r2["fid"], rel=1e-9) and r1["fid"] != r3["fid"]
    with pytest.raises(UserError, match="has only 60 images"):
        M.fid_from_data(ds, ref, extractor, n=61)


def test_fid_from_model_is_batch_independent(extractor, tmp_path, make_checkpoint, tiny_preset):
    """FID of a checkpoint's samples (a tiny CTM U-Net on 3x16x16) does not depend on the batch size."""
    from ctmtool.core.models import load_model
    from ctmtool.jobs.plan import plan_sampling

    model = load_model(make_checkpoint(tmp_path / "tiny.safetensors", "ctm", (3, 16, 16),
                                       tiny_preset("digits", net="unet")))
    ref = M.compute_stats([_images(40, size=16)], extractor)
    plan = {b: plan_sampling(model, nfe=1, gamma=0.0, noise="edm", batch=b) for b in (4, 6)}
    a = M.fid_from_model(model, ref, extractor, n=6, plan=plan[4], seed=3, device="cpu")
    b = M.fid_from_model(model, ref, extractor, n=6, plan=plan[6], seed=3, device="cpu")
    assert np.isfinite(a["fid"]) and a["n"] == 6 and a["seed"] == 3
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-6)
