"""Minibatch OT against the exact assignment (scipy's Hungarian solver) and against random pairing."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ctmtool.gctm.sinkhorn import ot_indices, ot_pairing, pairwise_cost, sinkhorn_log, sinkhorn_plan


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_assignment(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).square()
    rows, cols = linear_sum_assignment(cost.numpy())
    assert (rows == range(len(rows))).all()
    return torch.from_numpy(cols)


def sq_displacement(x0: torch.Tensor, x1: torch.Tensor) -> float:
    return float((x0 - x1).flatten(1).square().sum(1).mean())


def test_pairwise_cost_is_the_squared_distance():
    g = gen()
    x0, x1 = torch.randn(5, 2, 3, generator=g), torch.randn(7, 2, 3, generator=g)
    want = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).square()
    torch.testing.assert_close(pairwise_cost(x0, x1, normalize="none"), want)
    torch.testing.assert_close(pairwise_cost(x0, x1, "euclidean", "none"), want.sqrt())
    torch.testing.assert_close(pairwise_cost(x0, x1, normalize="mean"), want / want.mean())
    spread = pairwise_cost(x0, x1)  # double-centred: rows and columns sum to 0, unit std
    torch.testing.assert_close(spread.sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(spread.sum(0), torch.zeros(7, dtype=torch.float64), atol=1e-9, rtol=0)
    assert spread.std().item() == pytest.approx(1.0)


@pytest.mark.parametrize("normalize", ["spread", "mean", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_plan_concentrates_on_the_exact_assignment(seed, normalize):
    g = gen(seed)
    x0, x1 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    perm = exact_assignment(x0, x1)
    plan = sinkhorn_plan(x0, x1, reg=1e-4, iters=5000, tol=1e-7, normalize=normalize)
    assert plan.shape == (6, 6)
    assert torch.equal(plan.argmax(1), perm)
    assert plan[torch.arange(6), perm].sum() > 0.99  # nearly all the mass on the optimal permutation


@pytest.mark.parametrize("reg", [0.01, 0.1, 1.0])
def test_plan_has_uniform_marginals(reg):
    g = gen()
    x0, x1 = torch.randn(16, 3, generator=g), torch.randn(12, 3, generator=g) + 1
    plan = sinkhorn_plan(x0, x1, reg=reg, iters=5000, tol=1e-8)
    torch.testing.assert_close(plan.sum(1), torch.full((16,), 1 / 16, dtype=plan.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((12,), 1 / 12, dtype=plan.dtype), atol=1e-9, rtol=0)
    assert plan.sum().item() == pytest.approx(1.0)


def test_large_reg_tends_to_the_independent_plan():
    g = gen()
    plan = sinkhorn_plan(torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), reg=1e4)
    torch.testing.assert_close(plan, torch.full((8, 8), 1 / 64, dtype=plan.dtype), atol=1e-5, rtol=0)


def test_log_domain_survives_tiny_reg():
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    plan = sinkhorn_log(cost, reg=1e-4, iters=50)  # exp(-1e4) underflows outside the log domain
    torch.testing.assert_close(plan, torch.eye(2, dtype=torch.float64) / 2)


def test_sinkhorn_refuses_a_non_positive_reg():
    with pytest.raises(ValueError, match="reg"):
        sinkhorn_log(torch.zeros(2, 2), reg=0.0)


def test_ot_pairing_with_small_reg_is_the_exact_assignment():
    g = gen(1)
    x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    perm = exact_assignment(x0, x1)
    idx = ot_indices(x0, x1, reg=1e-3, generator=gen(), iters=5000)
    assert torch.equal(idx, perm)
    torch.testing.assert_close(ot_pairing(x0, x1, reg=1e-3, generator=gen(), iters=5000), x1[perm])


@pytest.mark.parametrize("dim", [2, 3072])
def test_ot_pairing_reduces_the_displacement_like_exact_ot(dim):
    """2-D points and CIFAR-sized vectors alike: reg 0.01 gets nearly all of the exact-OT reduction."""
    g = gen(2)
    x0 = (torch.rand(128, dim, generator=g) * 2 - 1) * 0.5  # data-like target
    x1 = torch.randn(128, dim, generator=g)  # Gaussian source
    random = sq_displacement(x0, x1)
    exact = sq_displacement(x0, x1[exact_assignment(x0, x1)])
    paired = sq_displacement(x0, ot_pairing(x0, x1, reg=0.01, generator=gen()))
    assert (random - paired) / (random - exact) > 0.95  # may pass 1: a row draw may reuse an x1


def test_mean_normalisation_is_too_blunt_in_high_dimension():
    """Why "spread" is the default: with the cost divided by its mean, reg 0.01 leaves most of the gain."""
    g = gen(2)
    x0 = (torch.rand(128, 3072, generator=g) * 2 - 1) * 0.5
    x1 = torch.randn(128, 3072, generator=g)
    random = sq_displacement(x0, x1)
    exact = sq_displacement(x0, x1[exact_assignment(x0, x1)])
    plan = sinkhorn_plan(x0, x1, reg=0.01, normalize="mean")
    cost = pairwise_cost(x0, x1, normalize="none")
    paired = float((plan / plan.sum(1, keepdim=True) * cost).sum(1).mean())
    assert (random - paired) / (random - exact) < 0.6


def test_ot_pairing_is_a_function_of_the_generator_and_keeps_x0_order():
    g = gen(5)
    x0, x1 = torch.randn(32, 3, 4, 4, generator=g), torch.randn(32, 3, 4, 4, generator=g)
    a = ot_pairing(x0, x1, generator=gen(7))
    assert a.shape == x1.shape
    assert torch.equal(a, ot_pairing(x0, x1, generator=gen(7)))
    rows = {tuple(r.flatten().tolist()) for r in x1}
    assert all(tuple(r.flatten().tolist()) in rows for r in a)  # every partner is a row of x1
