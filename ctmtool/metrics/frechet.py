"""Frechet distance (Heusel et al. 2017) and KID (Binkowski et al. 2018) from feature statistics.

`Moments` accumulates the mean and covariance of features batch by batch in float64 (Chan et al.'s
pairwise update, on whatever device the features live); `frechet_distance` and `kid` work on NumPy
arrays on the CPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg


class Moments:
    """Streaming float64 mean and covariance of (B, D) feature batches (Chan, Golub & LeVeque 1979)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None  # (D,) float64
        self.scatter: torch.Tensor | None = None  # (D, D) float64: sum of outer products of deviations

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        """Add a (B, D) batch; the sums stay on the batch's device."""
        f = torch.as_tensor(feats).reshape(len(feats), -1).to(torch.float64)
        b = f.shape[0]
        if b == 0:
            return
        mean_b = f.mean(0)
        dev = f - mean_b
        scatter_b = dev.T @ dev
        if self.mean is None:
            self.n, self.mean, self.scatter = b, mean_b, scatter_b
            return
        if f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature batch has {f.shape[1]} dimensions, earlier batches had "
                             f"{self.mean.shape[0]}")
        mean_b, scatter_b = mean_b.to(self.mean.device), scatter_b.to(self.mean.device)
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.n * b / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) as float64 NumPy arrays; sigma is the unbiased (n - 1) covariance, as np.cov."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.mean.cpu().numpy()
        sigma = (self.scatter / (self.n - 1)).cpu().numpy()
        return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root without its singular-matrix warning (the old `disp=False`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Frechet distance of two Gaussians (Dowson & Landau
    1982).

    As in the reference TTUR code: if the product's square root is not finite, eps is added to both
    diagonals; a tiny imaginary part (numerical noise) is dropped, a large one is an error; scipy's
    warning about a singular product is silenced (singular covariances are normal when n < D).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"statistics do not match: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("matrix square root has a large imaginary part "
                             f"({np.abs(covmean.imag).max():.3g}); the covariances are too ill-conditioned "
                             "(too few samples for the feature size?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kid(feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random
    subsets (Binkowski et al. 2018, as in clean-fid); returns (mean, std over subsets)."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature arrays must be (N, D) with the same D, got {f1.shape} and {f2.shape}")
    d = f1.shape[1]
    m = min(len(f1), len(f2), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors on each side, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for k in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[k] = within - 2 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())
