"""The CTM paper's likelihood estimate (sony/ctm code/eval_bpd.py `likelihood(mode='correct')`), for
comparison.

ctmtool's own likelihood (`ctmtool.core.likelihood`) is the exact PF-ODE bound of uniformly dequantised 8-bit
data. The paper's bits/dim (CIFAR-10 2.43) come from a different estimator, reproduced here step by step:

1. the images in [-1, 1] (not dequantised) are perturbed with Gaussian noise at sigma0 = sigma(t_min)^rho,
   sigma(t) = smin^(1/rho) + t (smax^(1/rho) - smin^(1/rho)), t_min = 1e-3;
2. the PF-ODE dx/dt = -(1/2) d(sigma^2)/dt score, score = (D(x, sigma) - x) / sigma^2 (a CTM's D is its
   g(x, sigma, sigma)), with the change of log-density by Hutchinson's estimator with ONE Rademacher probe
   (fixed over the solve), is integrated from t_min to 1 by SciPy's RK45 at rtol = atol = 1e-3 in float64
   state (the network in float32);
3. log p = log N(x_1; 0, smax^2 I) + the integral, minus a "residual" term computed at a second, independent
   perturbation x' = x + s' n' with s' = sigma(t_min) (the code passes sigma(t_min), not sigma(t_min)^rho:
   0.413 for EDM's range), residual = ||x - D(x', s')||^2 / (2 s'^2) - D/2;
4. bits/dim = -log p / (D ln 2) + 7 (the code's "hack" for the [-1, 1] scaling; log2(127.5) = 6.994).

So the two numbers differ in what they bound: ctmtool's is an upper bound on the discrete data's NLL
(dequantisation, exact divergence or many probes, no residual), the paper's a one-probe stochastic estimate of
a Gaussian-perturbed continuous density with a residual correction at sigma 0.413 and a fixed offset of 7.
`bench/xcheck_likelihood_paper.py` compares this module with eval_bpd.py itself on the same model and points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Denoiser = Callable[..., torch.Tensor]
OFFSET_BITS = 7.0  # eval_bpd.py: "A hack to convert log-likelihoods to bits/dim"


def _sigma_root(t: torch.Tensor, smax: torch.Tensor, smin: torch.Tensor, rho: float) -> torch.Tensor:
    """smin^(1/rho) + t (smax^(1/rho) - smin^(1/rho)): the schedule before the power rho."""
    return smin ** (1.0 / rho) + t * (smax ** (1.0 / rho) - smin ** (1.0 / rho))


def _drift(denoise: Denoiser, x: torch.Tensor, t: torch.Tensor, smax, smin, rho: float) -> torch.Tensor:
    """-(1/2) d(sigma^2)/dt score at sigma = sigma_root(t)^rho; float64 (the denoiser's output is
    promoted)."""
    root = _sigma_root(t, smax, smin, rho)
    std = root**rho
    g2 = 2.0 * rho * std**2 * (smax ** (1.0 / rho) - smin ** (1.0 / rho)) / root
    score = (denoise(x, std).to(torch.float64) - x) / (std**2)[:, None, None, None]
    return -g2[:, None, None, None] * score / 2.0


def _residual(denoise: Denoiser, images: torch.Tensor, noise: torch.Tensor, smax, smin, rho: float,
              t_min: float) -> torch.Tensor:
    """||x - D(x + s' n', s')||^2 / (2 s'^2) - D/2 per item, s' = sigma_root(t_min) (eval_bpd.py `residual`),
    computed as there: a Gaussian reconstruction term minus an entropy term, each with float32 constants."""
    std = _sigma_root(t_min, smax, smin, rho)  # shape (1,)
    x_noisy = images + std[:, None, None, None] * noise
    denoised = denoise(x_noisy, std.expand(images.shape[0])).to(torch.float64)
    mean = x_noisy + std**2 * ((denoised - x_noisy) / std**2)
    dim = images[0].numel()
    entropy = dim / 2.0 * (math.log(2 * math.pi) + 2 * torch.log(std) + 1.0)
    recon = dim / 2.0 * (math.log(2 * math.pi)
                         + 2 * torch.log(std)) + 0.5 / std**2 * (images - mean).square().sum((1, 2, 3))
    return recon - entropy


@torch.no_grad()
def ctm_paper_bpd(denoise: Denoiser, images: torch.Tensor, generator: torch.Generator | None = None, *,
                  sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, t_min: float = 1e-3,
                  rtol: float = 1e-3, atol: float = 1e-3) -> tuple[torch.Tensor, int]:
    """(bits/dim per image, network evaluations) by the CTM paper's estimator (module docstring).

    `denoise(x, sigma)`: D(x, sigma) for (B, C, H, W) float32 images in [-1, 1] and sigma of shape (B,).
    Random draws, in eval_bpd.py's order from `generator`: the Rademacher probe, the ODE's start noise, the
    residual's noise.
    """
    from scipy import integrate

    images = images.float()
    shape, b, dim = images.shape, images.shape[0], images[0].numel()
    dev = images.device
    smax = torch.tensor([sigma_max], dtype=torch.float32, device=dev)
    smin = torch.tensor([sigma_min], dtype=torch.float32, device=dev)
    where = generator.device if generator is not None else dev
    probe = torch.randint(0, 2, shape, generator=generator, device=where,
                          dtype=torch.float32).to(dev) * 2 - 1.0
    z0 = torch.randn(shape, generator=generator, device=where).to(dev)
    evals = [0]

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(state[:-b].reshape(shape)).to(dev, torch.float32)
        tt = torch.ones(b, device=dev) * t
        drift = _drift(denoise, x, tt, smax, smin, rho)
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            f = (_drift(denoise, xg, tt, smax, smin, rho) * probe).sum()
            grad = torch.autograd.grad(f, xg)[0]
        div = (grad * probe).flatten(1).sum(1)
        evals[0] += 2
        return np.concatenate([drift.cpu().numpy().reshape(-1), div.cpu().numpy().reshape(-1)])

    std0 = _sigma_root(t_min, smax, smin, rho) ** rho
    start = images + std0[:, None, None, None] * z0
    init = np.concatenate([start.cpu().numpy().reshape(-1), np.zeros(b)])
    sol = integrate.solve_ivp(rhs, (t_min, 1.0), init, rtol=rtol, atol=atol, method="RK45")
    end = sol.y[:, -1]
    z1 = torch.from_numpy(end[:-b].reshape(shape)).to(dev, torch.float32)
    delta = torch.from_numpy(end[-b:].reshape(b)).to(dev, torch.float32)
    prior = -dim / 2.0 * torch.log(2 * math.pi * smax**2) - z1.square().sum((1, 2, 3)) / (2 * smax**2)
    noise_r = torch.randn(shape, generator=generator, device=where).to(dev)
    delta = delta - _residual(denoise, images, noise_r, smax, smin, rho, t_min)
    bpd = -(prior + delta) / math.log(2) / dim + OFFSET_BITS
    return bpd, evals[0]
