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

from ctmtool.core.precond import NoisePath, _bcast
from ctmtool.core.solvers import heun


class GaussianMixture(nn.Module):
    """A mixture of diagonal Gaussians over flattened data of any shape; usable wherever a denoiser is."""

    kind = "denoiser"
    has_density = True  # the exact density, and the exact score

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


class ExactTrajectory(NoisePath, nn.Module):
    """The PF-ODE jump G(x, t, s) of a denoiser by a fine Heun solve: the reference a CTM is distilled
    towards. With the exact mixture denoiser it is the true trajectory map, up to the solver's error."""

    kind = "trajectory"

    def __init__(self,
        denoiser: nn.Module,            # anything with denoise(x, sigma, labels)
        steps: int = 256,               # Heun steps per jump (per sample, Karras-spaced between t and s)
        rho: float = 7.0,               # spacing of the levels inside a jump
    ):
        super().__init__()
        self.denoiser, self.steps, self.rho = denoiser, steps, rho
        self.sigma_min, self.sigma_max = denoiser.sigma_min, denoiser.sigma_max

    def levels(self, t, s, x: torch.Tensor) -> torch.Tensor:
        """(steps + 1, B) levels from each sample's t to its s."""
        t = _bcast(t, x).reshape(-1).double()
        s = _bcast(s, x).reshape(-1).double()
        i = torch.linspace(0, 1, self.steps + 1, dtype=torch.float64, device=x.device)[:, None]
        a, b = t ** (1 / self.rho), s ** (1 / self.rho)
        return (a + i * (b - a)) ** self.rho

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:

        return heun(self.denoiser, x, self.levels(t, s, x), labels).to(x.dtype)

    def g(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        """The g with G = (s/t) x + (1 - s/t) g; at s = t the denoiser itself."""
        tt, ss = _bcast(t, x), _bcast(s, x)
        same = (ss >= tt).reshape(-1)
        out = self.denoiser.denoise(x, t, labels).to(x.dtype)
        if bool((~same).any()):
            jumped = self.jump(x, t, s, labels)
            ratio = ss / tt
            g = (jumped - ratio * x) / (1 - ratio).clamp_min(1e-12)
            out = torch.where(same.reshape(-1, *([1] * (x.ndim - 1))), out, g)
        return out

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        return self.denoiser.denoise(x, sigma, labels)

    forward = jump
