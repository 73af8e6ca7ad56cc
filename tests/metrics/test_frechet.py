"""Frechet distance and KID: closed forms, clean-fid agreement, streaming moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmtool.metrics.frechet import Moments, frechet_distance, kid


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_one_dimensional_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    d = 40
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(truth, rel=1e-9)


def test_commuting_covariances_closed_form():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute; sqrt(S1 S2) = Q diag(sqrt(ab)) Q^T."""
    rng = np.random.default_rng(1)
    d = 30
    q = _random_rotation(d, rng)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 1
    truth = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(truth, rel=1e-8)


def test_identical_statistics_give_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((500, 16)), rng.standard_normal((400, 16)) * 1.3 + 0.2
    m1, s1, m2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-8
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-8)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_agrees_with_clean_fid():
    cleanfid_fid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((800, 64)) @ rng.standard_normal((64, 64)) * 0.3
    f2 = rng.standard_normal((700, 64)) @ rng.standard_normal((64, 64)) * 0.3 + 0.1
    m1, s1, m2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    ours = frechet_distance(m1, s1, m2, s2)
    theirs = cleanfid_fid.frechet_distance(m1, s1, m2, s2)
    assert ours == pytest.approx(float(theirs), rel=1e-9)


def test_rank_deficient_covariances_stay_finite():
    """Fewer samples than dimensions: singular covariances, handled by the eps offset / real part."""
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((20, 50)), rng.standard_normal((20, 50)) + 0.5
    got = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert np.isfinite(got) and got > 0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_moments_match_numpy_in_float64():
    rng = np.random.default_rng(5)
    f = (rng.standard_normal((1037, 24)) * 3 + 1000).astype(np.float32)  # large offset: needs a stable update
    m = Moments()
    for lo, hi in [(0, 1), (1, 100), (100, 612), (612, 1037)]:  # uneven batches, one of size 1
        m.update(torch.from_numpy(f[lo:hi]))
    mu, sigma = m.result()
    f64 = f.astype(np.float64)
    assert m.n == 1037 and mu.dtype == np.float64
    np.testing.assert_allclose(mu, f64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f64, rowvar=False), rtol=1e-9, atol=1e-9)


def test_moments_need_two_vectors_and_equal_dims():
    m = Moments()
    m.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        m.result()
    with pytest.raises(ValueError, match="dimensions"):
        m.update(np.ones((2, 4)))


def test_kid_same_distribution_is_near_zero_and_shift_is_positive():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((1000, 32)), rng.standard_normal((1000, 32))
    same, same_std = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(same_std, 1e-4)


def test_kid_with_whole_sets_equals_clean_fid():
    """With the subset as large as both sets there is no randomness: both estimators see the same sums."""
    cleanfid_fid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((150, 20)), rng.standard_normal((150, 20)) + 0.3
    ours, _ = kid(a, b, subsets=1, subset_size=150)
    theirs = cleanfid_fid.kernel_distance(a, b, num_subsets=1, max_subset_size=150)
    assert ours == pytest.approx(theirs, rel=1e-10)


def test_kid_is_reproducible_with_a_seed():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    assert kid(a, b, 5, 50, seed=3) == kid(a, b, 5, 50, seed=3)
