"""The CTM objective (Kim et al. 2024, Sec. 4): the trajectory-consistency term and the DSM term on g(x, t,
t).

Estimate  x_est = G_tgt(G_theta(x_t, t, s), s, sigma_min)                       (gradient to theta)
Target    x_tgt = G_tgt(G_sg(theta)(Solver(x_t, t -> u), u, s), s, sigma_min)   (no gradient)
Both are compared at sigma_min with a distance d, Eq. 9; the target network `target` is the EMA of the
online network, the solver runs k Heun steps of a teacher (or of the model's own EMA denoiser).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from ctmtool.core import solvers
from ctmtool.core.schedules import sample_ctm_indices
from ctmtool.losses.edm import edm_weight


def has_dropout(net: torch.nn.Module) -> bool:
    """Whether any dropout layer of `net` can draw a mask (p > 0); without one, mask matching is skipped."""
    # SongUNet's functional dropout
    return any((isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
               or (isinstance(getattr(m, "dropout", None), float) and m.dropout > 0)
               for m in net.modules())


@contextmanager
def fixed_dropout(seed: int | None, device: torch.device):
    """Run the block with the global RNG reseeded to `seed` and restore it after: two blocks with the same
    seed draw the same dropout masks (matched masks between estimate and target, as in the CTM code).
    `seed=None` (a network without dropout) runs the block as is: forking the RNG costs time."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


class CTMLoss:
    """d(x_est, x_tgt) per sample for one batch of (t, u, s) drawn on the Karras grid (Eq. 9)."""

    def __init__(self,
        grid: torch.Tensor,             # Karras levels, decreasing from sigma_max to sigma_min
        max_steps: int,                 # K: most solver steps from t to u, P(k) ~ k
        distance: Callable,             # d(x, y) -> (B,)
        solver: str = "heun",           # heun | euler
        self_jump: bool = False,        # no teacher: x_u = G_target(x_t, t, u), the official `self_learn`
        s_sampler: str = "uniform",     # uniform over u..sigma_min (CTM) | sigma_min (consistency
                                        # distillation)
    ):
        if s_sampler not in ("uniform", "sigma_min"):
            raise ValueError(f"s_sampler {s_sampler!r} is not one of uniform, sigma_min")
        self.grid, self.max_steps, self.distance = grid.double().cpu(), max_steps, distance
        self.self_jump = self_jump
        self.s_at_min = s_sampler == "sigma_min"
        self.solver = solvers.SOLVERS[solver]
        self.sigma_min = float(grid[-1])

    def __call__(self, online, target, teacher, x0: torch.Tensor, labels=None,
                 generator: torch.Generator | None = None, index_generator: torch.Generator | None = None,
                 dropout_seed: int | None = 0, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (per-sample loss, x_est); x_est carries the gradient (the GAN term reuses it). `k`: the
        teacher steps t -> u when the caller drew them for the whole optimiser step (None: drawn here)."""
        dev = x0.device
        (t_i, u_i, s_i, k), (t, u, s), x_t, smin = self._draw(x0, generator, index_generator, k)
        seed2 = None if dropout_seed is None else dropout_seed + 1
        x_est = self._estimate(online, target, x_t, t, s, smin, labels, dropout_seed)

        with torch.no_grad():
            if self.self_jump:  # ctm-cifar10 karras_diffusion.py 184-193 (self_learn): one jump of the target
                x_u = teacher.jump(x_t, t, u, labels).to(x_t.dtype)
            else:
                path = torch.stack([self.grid[t_i + j] for j in range(k + 1)])  # (k + 1, B) per-sample levels
                x_u = self.solver(teacher, x_t, path, labels).to(x_t.dtype)  # levels stay on the CPU
            with fixed_dropout(dropout_seed, dev):
                x_s_tgt = online.jump(x_u, u, s, labels)
            with fixed_dropout(seed2, dev):
                x_tgt = target.jump(x_s_tgt, s, smin, labels)
        return self.distance(x_est.float(), x_tgt.float()), x_est

    def _draw(self, x0: torch.Tensor, generator, index_generator, k: int | None = None):
        """Indices (t, u, s, k) on the grid, their levels, x_t = x0 + t n, and sigma_min per sample."""
        dev = x0.device
        idx = sample_ctm_indices(x0.shape[0], self.grid.numel(), self.max_steps, generator=index_generator,
                                 k=k)
        # CD: every jump ends at sigma_min (the same draws otherwise, so the streams match CTM's)
        if self.s_at_min:
            idx = (idx[0], idx[1], torch.full_like(idx[2], self.grid.numel() - 1), idx[3])
        # non_blocking: a host-to-device copy from pageable memory is staged at once, and skips the stream
        # sync
        t, u, s = (self.grid[i].to(dev, torch.float32, non_blocking=True) for i in idx[:3])
        noise = torch.randn(x0.shape, device=dev, generator=generator)
        x_t = x0 + t.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        return idx, (t, u, s), x_t, torch.full_like(t, self.sigma_min)

    def _estimate(self, online, target, x_t, t, s, smin, labels, dropout_seed):
        seed2 = None if dropout_seed is None else dropout_seed + 1
        with fixed_dropout(dropout_seed, x_t.device):
            x_s = online.jump(x_t, t, s, labels)
        with fixed_dropout(seed2, x_t.device):
            return target.jump(x_s, s, smin, labels)

    def estimate(self, online, target, x0: torch.Tensor, labels=None,
                 generator: torch.Generator | None = None, index_generator: torch.Generator | None = None,
                 dropout_seed: int | None = 0, k: int | None = None) -> torch.Tensor:
        """x_est = G_target(G_online(x_t, t, s), s, sigma_min) alone, with the same draws as a loss call
        (the official discriminator step uses this estimate as its fake; no teacher solve)."""
        _, (t, _, s), x_t, smin = self._draw(x0, generator, index_generator, k)
        return self._estimate(online, target, x_t, t, s, smin, labels, dropout_seed)


class DSMLoss:
    """lambda(sigma) ||g(x0 + sigma n, sigma, sigma) - x0||^2 (Kim et al. 2024, Eq. 10), per-sample mean.

    Half the batch (1 - high_fraction) draws ln sigma ~ N(p_mean, p_std^2) as in EDM; the rest draws sigma
    uniformly from the upper half of the Karras grid, so the denoiser stays accurate at high noise too."""

    def __init__(self,
        grid: torch.Tensor,             # Karras levels, decreasing
        p_mean: float = -1.2,           # log-normal mean of ln(sigma)
        p_std: float = 1.2,             # log-normal std of ln(sigma)
        sigma_data: float = 0.5,        # sets the EDM weighting
        high_fraction: float = 0.5,     # share of the batch drawn from the grid's high-noise half
        sampler: str = "grid_high",     # "grid_high" (above), or the paper's "halflognormal" (see
                                        # `halflognormal_sigmas`)
        rho: float = 7.0,               # Karras curvature for "halflognormal"
        u_max: float = 0.7,             # "halflognormal": u ~ U[0, u_max] on the continuous Karras schedule
    ):
        self.grid, self.p_mean, self.p_std, self.sigma_data, self.high_fraction = (grid.float(), p_mean,
                                                                                   p_std, sigma_data,
                                                                                   high_fraction)
        if sampler not in ("grid_high", "halflognormal"):
            raise ValueError(f"unknown DSM sampler {sampler!r}")
        self.sampler, self.rho, self.u_max = sampler, rho, u_max

    def sigmas(self, b: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.sampler == "halflognormal":
            return halflognormal_sigmas(b, self.p_mean, self.p_std, float(self.grid.min()),
                                        float(self.grid.max()), self.rho, self.u_max, device, generator)
        sigma = (torch.randn(b, device=device, generator=generator) * self.p_std + self.p_mean).exp()
        n_high = int(round(b * self.high_fraction))
        if n_high:
            half = max(1, self.grid.numel() // 2)
            idx = torch.randint(0, half, (n_high,), device=device, generator=generator)
            sigma = torch.cat([sigma[: b - n_high], self.grid.to(device, non_blocking=True)[idx]])
        return sigma

    def __call__(self, model, x0: torch.Tensor, labels=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        b, dev = x0.shape[0], x0.device
        sigma = self.sigmas(b, dev, generator)
        noise = torch.randn(x0.shape, device=dev, generator=generator)
        sig = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        d = model.denoise(x0 + sig * noise, sigma, labels)
        return (edm_weight(sig, self.sigma_data) * (d - x0) ** 2).reshape(b, -1).mean(1)


def halflognormal_sigmas(b: int, p_mean: float, p_std: float, sigma_min: float, sigma_max: float,
                         rho: float = 7.0, u_max: float = 0.7, device=None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's DSM noise levels (ctm-cifar10 cm/resample.py, `halflognormal`): the first b // 2 have
    ln sigma ~ N(p_mean, p_std^2); the other b - b // 2 are (sigma_max^(1/rho) + u (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho with u ~ U[0, u_max] (0.7: sigma in [0.318, 80] for EDM's range)."""
    logn = (torch.randn(b // 2, device=device, generator=generator) * p_std + p_mean).exp()
    u = torch.rand(b - b // 2, device=device, generator=generator) * u_max
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([logn, (hi + u * (lo - hi)) ** rho])
