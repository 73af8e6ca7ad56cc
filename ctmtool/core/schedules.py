"""Noise-level grids and the (t, u, s) index sampling of CTM training."""

from __future__ import annotations

import torch


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None, dtype=torch.float64) -> torch.Tensor:
    """Karras et al. (2022) Eq. 5: n levels from sigma_max down to sigma_min (n >= 2)."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got {n}")
    i = torch.arange(n, device=device, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    s = (a + i / (n - 1) * (b - a)) ** rho
    s[0], s[-1] = sigma_max, sigma_min  # exact endpoints (no rounding from the 1/rho powers)
    return s.to(dtype)


def ctm_grid(preset) -> torch.Tensor:
    """The CTM training grid of a preset: `ctm.grid` Karras levels over its `diffusion` range."""
    d = preset.diffusion
    return karras_sigmas(preset.ctm.grid, d.sigma_min, d.sigma_max, d.rho)


def ctm_default_schedule(nfe: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                         device=None) -> torch.Tensor:
    """The CTM reference sampling schedule for `nfe` jumps: the Karras grid with nfe + 1 points."""
    if nfe < 1:
        raise ValueError(f"nfe must be at least 1, got {nfe}")
    if nfe == 1:
        return torch.tensor([sigma_max, sigma_min], dtype=torch.float64, device=device)
    return karras_sigmas(nfe + 1, sigma_min, sigma_max, rho, device=device)


def gctm_times(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """GCTM time grid: n Karras sigmas mapped by t = sigma / (1 + sigma), decreasing, with t_0 = 1 and t_{n-1}
    = 0.

    The ends are set exactly (not 80/81 and 0.002/1.002), as the reference's EDM_N2I discretisation does
    (its ascending grid sets ts[0] = 0 and ts[-1] = 1): trajectories start at the source x1 and end at x0.
    """
    t = karras_sigmas(n, sigma_min, sigma_max, rho)
    t = t / (1 + t)
    t[0], t[-1] = 1.0, 0.0
    return t


def check_schedule(sigmas: torch.Tensor | list[float]) -> torch.Tensor:
    """Validate a user schedule: at least two levels, positive, strictly decreasing."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError("a schedule needs at least two noise levels, e.g. 80,0.002")
    if (s <= 0).any():
        raise ValueError(f"noise levels must be positive, got {s.tolist()}")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"noise levels must strictly decrease, got {s.tolist()}")
    return s


def step_count_probs(max_steps: int) -> torch.Tensor:
    """P(k) proportional to k over k = 1..K: the number of teacher steps in one CTM target."""
    k = torch.arange(1, max_steps + 1, dtype=torch.float64)
    return k / k.sum()


def sample_teacher_steps(max_steps: int, generator: torch.Generator | None = None) -> int:
    """k in 1..K with P(k) ~ k: the teacher steps of one CTM optimiser step (ctm-cifar10 karras_diffusion.py
    get_num_heun_step, drawn once in train_util.py forward_backward and shared by its micro-batches)."""
    return int(torch.multinomial(step_count_probs(max_steps), 1, generator=generator).item()) + 1


def sample_ctm_indices(batch: int, grid: int, max_steps: int, generator: torch.Generator | None = None,
                       k: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   int]:
    """Draw grid indices t < u <= s for a CTM batch (index 0 is sigma_max, grid - 1 is sigma_min).

    k (the teacher steps from t to u) is one number for the whole batch, drawn with P(k) ~ k, so the
    teacher runs k batched steps; t is uniform over 0..grid-1-k, u = t + k, s uniform over u..grid-1.
    Returns (t_idx, u_idx, s_idx, k).
    """
    if k is None:
        k = sample_teacher_steps(max_steps, generator)
    if not 1 <= k <= grid - 1:
        raise ValueError(f"k = {k} teacher steps does not fit a grid of {grid} points")
    t_idx = torch.randint(0, grid - k, (batch,), generator=generator)
    u_idx = t_idx + k
    span = (grid - u_idx).to(torch.float64)  # choices for s: u..grid-1
    s_idx = u_idx + (torch.rand(batch, generator=generator, dtype=torch.float64) * span).floor().long()
    s_idx = torch.minimum(s_idx, torch.full_like(s_idx, grid - 1))
    return t_idx.to(device), u_idx.to(device), s_idx.to(device), k
