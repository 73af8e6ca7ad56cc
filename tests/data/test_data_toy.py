"""Toy 2-D data: the GMM is sampled exactly from the configured mixture; the shapes are what they claim."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtool.config import GMMConfig
from ctmtool.core.analytic import GaussianMixture
from ctmtool.data.toy import toy_points
from ctmtool.errors import UserError

RING = GMMConfig(means=[[0.7 * math.cos(k * math.pi / 4), 0.7 * math.sin(k * math.pi / 4)] for k in range(8)],
                 weights=[1.0] * 8, std=0.05)


def test_gmm_is_the_configured_mixture():
    ds = toy_points("gmm", 20000, seed=3, gmm_cfg=RING)
    assert ds.values.shape == (20000, 2) and ds.values.dtype == torch.float32 and ds.labels is None
    exact = GaussianMixture.from_config(RING).sample(20000, torch.Generator().manual_seed(3))
    assert torch.equal(ds.values, exact)
    x = ds.values.double()
    # mixture of 8 equal components on a ring of radius 0.7: mean 0, per-dim variance 0.7^2 / 2 + 0.05^2
    assert x.mean(0).abs().max() < 0.015
    assert torch.allclose(x.std(0), torch.full((2,), math.sqrt(0.245 + 0.0025), dtype=torch.float64),
                          atol=0.01)
    means = torch.tensor(RING.means, dtype=torch.float64)
    dist, comp = torch.cdist(x, means).min(1)
    assert torch.allclose(torch.bincount(comp, minlength=8).double() / 20000,
                          torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.015)
    # distance to the own mean is the norm of a 2-D N(0, 0.05^2) vector: Rayleigh, mean 0.05 sqrt(pi/2)
    assert abs(dist.mean() - 0.05 * math.sqrt(math.pi / 2)) < 0.002


def test_gmm_unequal_weights_and_dims():
    cfg = GMMConfig(means=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], weights=[3, 1], std=0.1)
    x = toy_points("gmm", 40000, 0, cfg).values.double()
    assert x.shape == (40000, 3)
    assert torch.allclose(x.mean(0), torch.full((3,), 0.25, dtype=torch.float64), atol=0.01)
    # var = E[var | k] + var(mean) = 0.01 + 0.25 * 0.75
    assert torch.allclose(x.var(0), torch.full((3,), 0.01 + 0.1875, dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("name", ["moons", "checkerboard", "swissroll"])
def test_shapes_scaled_and_deterministic(name):
    a, b, c = (toy_points(name, 20000, seed) for seed in (1, 1, 2))
    assert a.values.shape == (20000, 2) and a.values.dtype == torch.float32 and a.name == f"toy:{name}"
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert a.values.mean(0).abs().max() < 0.05
    std = a.values.std(0)
    assert ((std > 0.3) & (std < 0.7)).all(), std


def test_checkerboard_lies_on_dark_squares():
    x = toy_points("checkerboard", 5000, 0).values.double() / (math.sqrt(12) / 8)  # back to [-2, 2]^2
    assert x.abs().max() <= 2
    cell = torch.floor(x).long() + 2
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    assert torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).count_nonzero() == 8


def test_moons_lie_near_two_unit_half_circles():
    p = toy_points("moons", 5000, 0).values.double() / 0.7 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    upper = (p.norm(dim=1) - 1).abs()
    lower = ((p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    assert torch.minimum(upper, lower).mean() < 0.08


def test_toy_errors():
    with pytest.raises(UserError, match="unknown toy data 'spiral'"):
        toy_points("spiral", 10, 0)
    with pytest.raises(UserError, match=r"\[data.gmm\]"):
        toy_points("gmm", 10, 0)
