"""The CTM paper's likelihood protocol (ctmtool.core.likelihood_paper) against a closed form: Gaussian data.

For data N(0, v I) the denoiser is D(x, sigma) = x v / (v + sigma^2), the PF-ODE maps the perturbed density
N(0, (v + sigma0^2) I) at sigma0 to N(0, (v + smax^2) I) exactly and the Jacobian is a multiple of I (so one
Rademacher probe gives the exact divergence): log p(x0) = log N(x0; 0, v + sigma0^2). With the residual of the
same draws, the protocol's bits/dim are known in closed form up to the ODE tolerance.
bench/xcheck_likelihood_paper.py compares with eval_bpd.py itself.
"""

from __future__ import annotations

import math

import torch

from ctmtool.core.likelihood_paper import ctm_paper_bpd


def test_gaussian_data_closed_form():
    v, smax, smin, rho, t_min = 0.3, 80.0, 0.002, 7.0, 1e-3
    shape = (3, 3, 4, 4)
    dim = 48

    def denoise(x, sigma):
        return x * v / (v + sigma.reshape(-1, 1, 1, 1) ** 2)

    images = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got, nfe = ctm_paper_bpd(denoise, images, torch.Generator().manual_seed(3), rtol=1e-6, atol=1e-6)

    g = torch.Generator().manual_seed(3)  # the draws, in the protocol's order
    torch.randint(0, 2, shape, generator=g, dtype=torch.float32)
    z0, n1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    root = lambda t: smin ** (1 / rho) + t * (smax ** (1 / rho) - smin ** (1 / rho))  # noqa: E731
    s0, s1 = root(t_min) ** rho, root(t_min)
    x0 = (images + s0 * z0).double()
    var = v + s0**2
    logp = -0.5 * dim * math.log(2 * math.pi * var) - x0.square().sum((1, 2, 3)) / (2 * var)
    xr = (images + s1 * n1).double()
    residual = 0.5 / s1**2 * (images.double() - xr * v / (v + s1**2)).square().sum((1, 2, 3)) - dim / 2
    want = -(logp - residual) / math.log(2) / dim + 7.0
    assert nfe > 0
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-4)
    assert (got - (-(logp) / math.log(2) / dim + 7.0)).abs().min() > 1e-2  # the residual term matters
