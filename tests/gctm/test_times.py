"""GCTM's training times as the reference draws them (ctmtool.gctm.times); bench/xcheck_gctm_times.py compares
the distributions with the official sampler itself."""

from __future__ import annotations

import torch

from ctmtool.config import load_preset
from ctmtool.core.schedules import gctm_times
from ctmtool.gctm.couplings import IndependentCoupling
from ctmtool.gctm.times import curriculum_steps, official_indices, snap_up
from ctmtool.losses.distances import SquaredL2
from ctmtool.train.gctm_objective import GCTMLoss, gctm_objective


def test_official_indices_order_and_marginals():
    grid = gctm_times(5, 0.002, 500.0)  # Edges->Shoes: 4 steps
    n = 200_000
    t, u, s = official_indices(n, grid, (1.2, 2.0), torch.Generator().manual_seed(0))
    assert ((t < u) & (u <= s) & (s <= 4) & (t >= 0)).all()
    asc = grid.flip(0)
    want_s = (1 - asc[:-1]) / (1 - asc[:-1]).sum()  # P(s index j) ~ 1 - ts[j] (ascending j)
    got_s = torch.bincount(4 - s, minlength=5)[:4].double() / n
    torch.testing.assert_close(got_s, want_s, atol=4e-3, rtol=0)
    # t = 1 is rare (the reference's lambda ~ Beta(1.2, 2) mostly lands inside): 0.027 vs CTM's sampler's ~0.6
    assert abs(float((t == 0).double().mean()) - 0.027) < 0.004


def test_official_indices_are_reproducible_from_the_generator():
    grid = gctm_times(9)
    a = official_indices(64, grid, generator=torch.Generator().manual_seed(5))
    b = official_indices(64, grid, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_snap_up_moves_each_time_to_the_first_grid_point_at_or_above():
    fine = gctm_times(9)
    asc = fine.flip(0)
    t = torch.tensor([1e-6, float(asc[3]), float(asc[3]) + 1e-9, 0.9999999, 1.0], dtype=torch.float64)
    got = snap_up(t, fine)
    assert got.tolist() == [float(asc[1]), float(asc[3]), float(asc[4]), 1.0, 1.0]


def test_dsm_times_on_the_fine_grid_with_no_training_grid_share():
    fine = gctm_times(1025, 0.002, 500.0)
    loss = GCTMLoss(gctm_times(5, 0.002, 500.0), 4, SquaredL2(), dsm_times="beta_3_1", grid_fraction=0.0,
                    fine_grid=fine)
    t = loss.sample_dsm_times(20_000, torch.Generator().manual_seed(1)).double()
    on_grid = torch.isin(t, fine.float().double())
    assert on_grid.all() and (t > 0).all()
    assert abs(float((t ** 3).mean()) - 0.5) < 0.02  # t ~ Beta(3, 1): E[t^3] = 3/6


def test_curriculum_doubles_the_training_grid():
    assert [curriculum_steps(4, k, 10, 1024) for k in (0, 9, 10, 25, 100)] == [4, 4, 8, 16, 1024]
    assert curriculum_steps(4, 10**6, None, 1024) == 4
    p = load_preset("toy-translate", ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "gctm.grid=3",
                                      "gctm.max_steps=2", "distill.batch=32", "gctm.double_every=2"])
    obj = gctm_objective(p, (2,), torch.device("cpu"), IndependentCoupling(),
                         {"var0": 0.2, "var1": 1.0, "cov01": 0.0})
    sizes = []
    for _ in range(5):
        obj.step([(torch.randn(32, 2), None)], 0.0)
        sizes.append(obj.terms.loss.grid.numel())
    assert sizes == [3, 3, 5, 5, 9]  # 2 steps, then 4, then 8
