"""The EDM denoising loss (Karras et al. 2022, Eq. 2 with the weighting and noise distribution of Table 1)."""

from __future__ import annotations

import torch


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2: unit-variance loss at every level."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMLoss:
    """lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 with ln sigma ~ N(p_mean, p_std^2); per-sample mean."""

    def __init__(self,
        p_mean: float = -1.2,           # mean of ln(sigma)
        p_std: float = 1.2,             # standard deviation of ln(sigma)
        sigma_data: float = 0.5,        # data standard deviation (sets the weighting)
    ):
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def __call__(self, model, x0: torch.Tensor, labels=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b = x0.shape[0]
        sigma = (torch.randn(b, device=x0.device, generator=generator) * self.p_std + self.p_mean).exp()
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        sig = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        d = model.denoise(x0 + sig * noise, sigma, labels)
        return (edm_weight(sig, self.sigma_data) * (d - x0) ** 2).reshape(b, -1).mean(1)
