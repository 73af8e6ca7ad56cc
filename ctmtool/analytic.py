"""Closed-form oracles: a Gaussian mixture's exact denoiser and density at every noise level.

If x0 ~ sum_k w_k N(mu_k, diag(v_k)) and x = x0 + sigma n, then x ~ sum_k w_k N(mu_k, diag(v_k + sigma^2)),
E[x0 | x, k] = mu_k + v_k / (v_k + sigma^2) (x - mu_k), and the posterior weights are the components'
responsibilities at x. This gives an exact teacher (`denoise`), an exact score and an exact log-density
at every sigma: the truth against which solvers, distillation and likelihoods are tested.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ctmtool.precond import _bcast


class GaussianMixture(nn.Module):
    """A mixture of diagonal Gaussians over flattened data of any shape; usable wherever a denoiser is."""

    kind = "denoiser"

    def __init__(self,
        means: torch.Tensor,            # (K, *shape) component means
        weights: torch.Tensor,          # (K,) mixture weights (normalised here)
        std: torch.Tensor | float,      # scalar, (K,), or (K, *shape) per-dimension standard deviations
        sigma_min: float = 0.002,       # for samplers that ask a model its range
        sigma_max: float = 80.0,
    ):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        self.shape = tuple(means.shape[1:])
        k = means.shape[0]
        w = torch.as_tensor(weights, dtype=torch.float64)
        std = torch.as_tensor(std, dtype=torch.float64)
        var = (std.reshape(k, *([1] * len(self.shape))) if std.ndim == 1 else std) ** 2
        var = var.expand_as(means).reshape(k, -1).clone()
        self.register_buffer("means", means.reshape(k, -1))
        self.register_buffer("log_weights", (w / w.sum()).log())
        self.register_buffer("var", var)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    @classmethod
    def from_config(cls, gmm, sigma_min: float = 0.002, sigma_max: float = 80.0) -> GaussianMixture:
        return cls(torch.tensor(gmm.means), torch.tensor(gmm.weights), gmm.std, sigma_min, sigma_max)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.var[comp].sqrt() * z
        return x.reshape(n, *self.shape).float()

    def _component_logpdf(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log N(x; mu_k, diag(v_k + sigma^2)) for every sample and component: (B, K)."""
        xf = x.reshape(x.shape[0], -1).double()
        tot = self.var[None] + sigma.double().reshape(-1, 1, 1) ** 2  # (B, K, D)
        diff = xf[:, None, :] - self.means[None]
        return -0.5 * ((diff**2 / tot) + tot.log() + math.log(2 * math.pi)).sum(-1)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact log-density of x under the mixture convolved with N(0, sigma^2 I): (B,) in nats."""
        s = _bcast(sigma, x).reshape(-1)
        return torch.logsumexp(self.log_weights + self._component_logpdf(x, s), dim=1)

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        """E[x0 | x0 + sigma n = x], in closed form."""
        s = _bcast(sigma, x).reshape(-1).double()
        xf = x.reshape(x.shape[0], -1).double()
        resp = torch.softmax(self.log_weights + self._component_logpdf(x, s), dim=1)  # (B, K)
        tot = self.var[None] + s.reshape(-1, 1, 1) ** 2
        post = self.means[None] + self.var[None] / tot * (xf[:, None, :] - self.means[None])  # (B, K, D)
        return (resp[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
        return (self.denoise(x, sigma) - x) / _bcast(sigma, x) ** 2

    forward = denoise
