"""Noise grids (Karras et al. 2022, Eq. 5; the CTM reference code's default schedules) and CTM's (t, u, s)
index sampling (Kim et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ctmtool.core.schedules import (
    check_schedule,
    ctm_default_schedule,
    karras_sigmas,
    sample_ctm_indices,
    step_count_probs,
)


def _karras(i: int, n: int, smin=0.002, smax=80.0, rho=7.0) -> float:
    """Karras et al. 2022, Eq. 5, written out in plain Python."""
    a, b = smax ** (1 / rho), smin ** (1 / rho)
    return (a + i / (n - 1) * (b - a)) ** rho


@pytest.mark.parametrize("n", [2, 3, 18, 40])
def test_karras_formula(n):
    s = karras_sigmas(n)
    assert s.dtype == torch.float64 and s.shape == (n,)
    for i in range(n):
        assert s[i].item() == pytest.approx(_karras(i, n), rel=1e-13)
    assert s[0].item() == pytest.approx(80.0, rel=1e-14)
    assert s[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert (s[1:] < s[:-1]).all()


def test_karras_other_range():
    s = karras_sigmas(10, sigma_min=0.01, sigma_max=5.0, rho=3.0)
    assert [v.item() for v in s] == pytest.approx([_karras(i, 10, 0.01, 5.0, 3.0) for i in range(10)],
                                                  rel=1e-13)
    # rho = 1 is a uniform grid
    u = karras_sigmas(5, sigma_min=1.0, sigma_max=5.0, rho=1.0)
    assert u.tolist() == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0], rel=1e-14)


@pytest.mark.parametrize("n", [3, 18])
def test_karras_endpoints_exact(n):
    s = karras_sigmas(n)
    assert s[0].item() == 80.0
    assert s[-1].item() == 0.002


def test_karras_refuses_short():
    with pytest.raises(ValueError):
        karras_sigmas(1)


@pytest.mark.parametrize("nfe,expected", [
    (1, [80, 0.002]),
    (2, [80, 2.515, 0.002]),
    (3, [80, 9.72, 0.47, 0.002]),
    (4, [80, 17.53, 2.515, 0.170, 0.002]),
])
def test_ctm_reference_schedules(nfe, expected):
    """the CTM reference code's default schedules, to 3 significant digits."""
    s = ctm_default_schedule(nfe).tolist()
    assert len(s) == nfe + 1
    for got, want in zip(s, expected, strict=True):
        assert float(f"{got:.3g}") == float(f"{want:.3g}"), (got, want)


def test_ctm_default_schedule_refuses_zero():
    with pytest.raises(ValueError):
        ctm_default_schedule(0)


def test_check_schedule_accepts_and_refuses():
    assert check_schedule([80, 2.515, 0.002]).tolist() == [80, 2.515, 0.002]
    assert check_schedule(torch.tensor([1.0, 0.5])).dtype == torch.float64
    for bad, words in [([80], "at least two"), ([], "at least two"), ([80, 80, 0.002], "strictly decrease"),
                       ([0.002, 80], "strictly decrease"), ([80, -1.0], "positive"), ([80, 0.0], "positive"),
                       ([[80, 1], [2, 1]], "at least two")]:
        with pytest.raises(ValueError, match=words):
            check_schedule(bad)


# --------------------------------------------------------------------------------------------------
# (t, u, s) index sampling


def test_step_count_probs():
    p = step_count_probs(17)
    assert p.tolist() == pytest.approx([k / 153 for k in range(1, 18)], rel=1e-14)  # 1 + ... + 17 = 153


@pytest.mark.parametrize("grid,max_steps", [(18, 17), (18, 5), (40, 39), (2, 1)])
def test_indices_invariants(grid, max_steps):
    g = torch.Generator().manual_seed(grid * 100 + max_steps)
    for _ in range(40):
        t, u, s, k = sample_ctm_indices(64, grid, max_steps, generator=g)
        assert 1 <= k <= max_steps
        assert t.dtype == torch.int64 and t.shape == u.shape == s.shape == (64,)
        assert (u - t == k).all()
        assert (t >= 0).all() and (t < u).all() and (u <= s).all() and (s <= grid - 1).all()


def test_k_distribution_proportional_to_k():
    g = torch.Generator().manual_seed(0)
    K, draws = 17, 10000
    ks = torch.tensor([sample_ctm_indices(1, 18, K, generator=g)[3] for _ in range(draws)])
    counts = torch.bincount(ks, minlength=K + 1)[1:].double()
    expected = torch.arange(1, K + 1, dtype=torch.float64) / (K * (K + 1) / 2) * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, K - 1) > 1e-3, (counts.tolist(), expected.tolist())


@pytest.mark.parametrize("k", [1, 5, 17])
def test_t_uniform_and_s_uniform_given_k(k):
    grid, n = 18, 20000
    g = torch.Generator().manual_seed(k)
    t, u, s, got_k = sample_ctm_indices(n, grid, 17, generator=g, k=k)
    assert got_k == k
    # t uniform over 0..grid-1-k
    m = grid - k
    counts = torch.bincount(t, minlength=m).double()
    assert counts.numel() == m and (counts > 0).all()
    if m > 1:
        assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    # s uniform over u..grid-1 given u: (s - u) / (grid - u) is uniform on [0, 1) in steps of 1/(grid - u)
    offs = (s - u).double()
    span = (grid - u).double()
    assert (offs >= 0).all() and (offs < span).all()
    # E[s - u | u] = (grid - 1 - u) / 2
    mean_err = (offs - (span - 1) / 2) / torch.sqrt((span**2 - 1) / 12).clamp_min(1e-9)
    assert abs(float(mean_err.mean())) < 4 / math.sqrt(n)
    if k == 17:  # u is always the last grid index: s must be it too
        assert (s == grid - 1).all()


def test_s_uniform_for_fixed_u():
    g = torch.Generator().manual_seed(3)
    grid, k = 18, 1
    t, u, s, _ = sample_ctm_indices(40000, grid, 17, generator=g, k=k)
    sel = s[u == 1]  # s uniform over 1..17
    counts = torch.bincount(sel - 1, minlength=17).double()
    assert counts.numel() == 17
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_indices_refuse_k_beyond_grid():
    with pytest.raises(ValueError):
        sample_ctm_indices(4, 5, 4, k=5)
    with pytest.raises(ValueError):
        sample_ctm_indices(4, 5, 4, k=0)


def test_indices_reproducible():
    a = sample_ctm_indices(16, 18, 17, generator=torch.Generator().manual_seed(7))
    b = sample_ctm_indices(16, 18, 17, generator=torch.Generator().manual_seed(7))
    assert a[3] == b[3] and all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
