"""2-D toy distributions: the configured Gaussian mixture (exact) and three classic shapes.

Every shape is centred near 0 with a per-dimension standard deviation of roughly 0.5, like the
mixture in ctmtool/presets/toy.toml, and is a pure function of (name, n, seed).
"""

from __future__ import annotations

import math

import torch

from ctmtool.config import GMMConfig
from ctmtool.core.analytic import GaussianMixture
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError

TOY_NAMES = ("gmm", "moons", "checkerboard", "swissroll")


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles with a little Gaussian noise."""
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    lower = torch.rand(n, generator=g) < 0.5
    x = torch.where(lower, 1 - t.cos(), t.cos())
    y = torch.where(lower, 0.5 - t.sin(), t.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.08 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return 0.7 * pts


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform over the 8 dark squares of a 4x4 board on [-2, 2]^2."""
    col = torch.randint(0, 4, (n,), generator=g)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + col % 2
    cell = torch.stack([col, row], 1).double() - 2
    pts = cell + torch.rand(n, 2, generator=g, dtype=torch.float64)
    return pts * (math.sqrt(12) / 8)  # each marginal is uniform on [-2, 2]: std 4 / sqrt(12) -> 0.5


def _swissroll(n: int, g: torch.Generator) -> torch.Tensor:
    """A 2-D spiral r = theta for theta in [1.5 pi, 4.5 pi], with a little Gaussian noise."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([theta * theta.cos(), theta * theta.sin()], 1)
    pts = pts + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (pts - torch.tensor([2.0, 0.21], dtype=torch.float64)) / 13.6  # centred, std about 0.5


def toy_points(name: str, n: int, seed: int = 0, gmm_cfg: GMMConfig | None = None) -> Dataset:
    """`n` float32 points of the named 2-D toy distribution, deterministic given `seed`."""
    if name not in TOY_NAMES:
        raise UserError(f"unknown toy data {name!r}; choose one of {', '.join(TOY_NAMES)}")
    g = torch.Generator().manual_seed(seed)
    if name == "gmm":
        if gmm_cfg is None:
            raise UserError("data.toy = 'gmm' needs a [data.gmm] table with means, weights and std")
        pts = GaussianMixture.from_config(gmm_cfg).sample(n, generator=g)
    else:
        pts = {"moons": _moons, "checkerboard": _checkerboard, "swissroll": _swissroll}[name](n, g)
    return Dataset(pts.float().contiguous(), name=f"toy:{name}")
