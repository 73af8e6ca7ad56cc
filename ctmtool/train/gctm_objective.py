"""The GCTM objective (Kim et al. 2024b, "Generalized Consistency Trajectory Models", Sec. 3 and Alg. 1).

Along the flow-matching interpolation x_t = (1 - t) x0 + t x1 (x0 target/data side, x1 source side):

Estimate  x_est = G_theta(x_t, t, s)                                   (gradient to theta)
Target    x_tgt = G_sg(theta)(Heun_ema(x_t, t -> u), u, s)              (no gradient)
CTM term  d(x_est / w, x_tgt / w),  w = c_out(t) (1 - s/t)              (compared at time s)
DSM term  ||g_theta(x_t, t, t) - x0||^2 / c_out(t)^2                     (g(x, t, t) estimates E[x0 | x_t])

There is no teacher: the Heun solver integrates dx/dt = (x - g_ema(x, t, t)) / t with the model's own EMA
("target") network. Facts checked against the reference (1202kbs/GCTM, train_gctm.py, distances.py):
- the CTM term compares at time s (its `compare_zero` flag, off in every published config, would add an
  outer jump G_ema(., s, 0); `compare_zero=True` here does the same);
- its pseudo-Huber is called with weight w = c_out(t)(1 - s/t) and computes (sqrt(|d|^2 + (c w)^2) - c w) / w,
  which equals the plain pseudo-Huber of the rescaled difference d / w (what `weighted_distance` does);
  its l2 is |d|^2 / w^2; both sum over dimensions, as does its DSM l2 with weight c_out(t);
- the two terms are added with a constant weight (lmda_CTM on the CTM term there; `ctm.dsm_weight` on the
  DSM term here, so lmda_CTM = 10 reads dsm_weight = 0.1); "adaptive" (CTM's balancing) is also accepted.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ctmtool.config import Preset
from ctmtool.core import solvers
from ctmtool.core.models import build_precond
from ctmtool.core.schedules import gctm_times, sample_ctm_indices
from ctmtool.gctm.times import curriculum_steps, official_indices, snap_up
from ctmtool.losses.ctm import fixed_dropout
from ctmtool.losses.distances import PseudoHuber, SquaredL2, make_distance, pseudo_huber
from ctmtool.train.trajectory import TrajectoryObjective


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1 (GCTM Eq. 8, the conditional flow-matching path), t of shape (B,)."""
    tc = _col(t.to(x0.dtype), x0)
    return (1 - tc) * x0 + tc * x1


def weighted_distance(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, distance: nn.Module) -> torch.Tensor:
    """The CTM distance with GCTM's weight w = c_out(t)(1 - s/t), per sample (reference distances.py).

    Pseudo-Huber: ph(d / w) with the same c (= the reference's c scaled by w, divided by w); squared L2:
    sum |d|^2 / w^2; any other distance (LPIPS, features): d(x, y) / w.
    """
    wc = _col(w, x)
    if isinstance(distance, PseudoHuber):
        return pseudo_huber(x / wc, y / wc, distance.c)
    if isinstance(distance, SquaredL2):
        return ((x - y) / wc).flatten(1).square().sum(1)
    return distance(x, y) / w


class GCTMLoss:
    """GCTM's two terms on one batch of pairs (x0, x1): the CTM term at time s and the DSM term (Alg. 1)."""

    def __init__(self,
        grid: torch.Tensor,             # GCTM times, decreasing from 1 to 0 (`schedules.gctm_times`)
        max_steps: int,                 # K: most Heun steps from t to u, P(k) ~ k
        distance: nn.Module,            # d(x, y) -> (B,); PseudoHuber / SquaredL2 get GCTM's weighting
                                        # exactly
        solver: str = "heun",           # heun | euler, on the EMA denoiser
        dsm_times: str = "lognormal",   # lognormal | uniform | beta_3_1: how DSM times are drawn
        p_mean: float = -1.2,           # lognormal: mean of ln sigma, t = sigma / (1 + sigma)
        p_std: float = 1.2,             # lognormal: std of ln sigma
        sigma_min: float = 0.002,       # sigma range of the Karras grid (lognormal clamp, uniform draws)
        sigma_max: float = 80.0,
        rho: float = 7.0,               # Karras curvature for dsm_times = uniform
        grid_fraction: float = 0.25,    # share of DSM times drawn from the training grid (t = 1 included)
        compare_zero: bool = False,     # compare at time 0 through the EMA net instead of at s
        time_sampler: str = "ctm",      # official: the reference's (t, u, s) (`gctm.times`); ctm: CTM's,
                                        # K-capped
        beta: tuple[float, float] = (1.2, 2.0),  # official sampler: lambda ~ Beta(a, b)
        fine_grid: torch.Tensor | None = None,  # DSM times snapped up to this grid (the reference's 1024
                                                # steps)
    ):
        if dsm_times not in ("lognormal", "uniform", "beta_3_1"):
            raise ValueError(f"unknown dsm_times {dsm_times!r}; use lognormal, uniform or beta_3_1")
        self.grid, self.max_steps, self.distance = grid.double().cpu(), max_steps, distance
        self.solver = solvers.SOLVERS[solver]
        self.dsm_times, self.p_mean, self.p_std = dsm_times, p_mean, p_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.grid_fraction, self.compare_zero = grid_fraction, compare_zero
        if time_sampler not in ("official", "ctm"):
            raise ValueError(f"unknown time_sampler {time_sampler!r}; use official or ctm")
        self.time_sampler, self.beta = time_sampler, tuple(beta)
        self.fine_grid = None if fine_grid is None else fine_grid.double().cpu()

    def ctm(self, online, target, x0: torch.Tensor, x1: torch.Tensor, labels=None,
            index_generator: torch.Generator | None = None,
            dropout_seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample CTM term, x_est) for indices t < u <= s drawn as the reference
        (`gctm.times.official_indices`, per-sample step counts) or as in CTM (`sample_ctm_indices`, one k per
        batch)."""
        dev = x0.device
        if self.time_sampler == "official":
            t_i, u_i, s_i = official_indices(x0.shape[0], self.grid, self.beta, index_generator)
            k = int((u_i - t_i).max())
        else:
            t_i, u_i, s_i, k = sample_ctm_indices(x0.shape[0], self.grid.numel(), self.max_steps,
                                                  generator=index_generator)
        t, u, s = (self.grid[i].to(dev, torch.float32) for i in (t_i, u_i, s_i))
        x_t = interpolate(x0, x1, t)
        zero = torch.zeros_like(s)

        with fixed_dropout(dropout_seed, dev):
            x_est = online.jump(x_t, t, s, labels)
        if self.compare_zero:
            x_est = target.jump(x_est, s, zero, labels)
        with torch.no_grad():
            # (k + 1, B) per-sample times; a sample with fewer steps starts with zero-length steps at t (> 0:
            # they leave x as it is; repeating u instead would divide by u = 0)
            path = torch.stack([self.grid[torch.maximum(u_i - k + j, t_i)] for j in range(k + 1)])
            x_u = self.solver(target, x_t, path.to(dev), labels).to(x_t.dtype)
            with fixed_dropout(dropout_seed, dev):
                x_tgt = online.jump(x_u, u, s, labels)
            if self.compare_zero:
                x_tgt = target.jump(x_tgt, s, zero, labels)
            w = online.coefficients(t)[1] * (1 - s / t)
        return weighted_distance(x_est.float(), x_tgt.float(), w, self.distance), x_est

    def sample_dsm_times(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n DSM times in (0, 1]: `grid_fraction` of them from the grid (t = 0 excluded), the rest by
        `dsm_times`."""
        where = generator.device if generator is not None else device
        r = torch.rand(n, generator=generator, device=where, dtype=torch.float64)
        if self.dsm_times == "beta_3_1":  # density 3 t^2: the reference's edges2shoes choice
            t = r.pow(1 / 3).clamp(1e-4, 1.0)
        else:
            if self.dsm_times == "lognormal":  # EDM's log-normal sigma, the reference's CIFAR-10 choice
                z = torch.randn(n, generator=generator, device=where, dtype=torch.float64)
                sigma = (self.p_mean + self.p_std * z).exp().clamp(self.sigma_min, self.sigma_max)
            else:  # uniform over Karras grid positions: the reference's default over its 1024-point grid
                a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
                sigma = (a + r * (b - a)) ** self.rho
            t = sigma / (1 + sigma)
        if self.fine_grid is not None:  # the reference draws an index of its 1024-step grid with this mass
            t = snap_up(t, self.fine_grid)
        n_grid = int(round(n * self.grid_fraction))
        if n_grid:
            idx = torch.randint(0, self.grid.numel() - 1, (n_grid,), generator=generator, device=where)
            t = torch.cat([t[: n - n_grid], self.grid.to(where)[idx]])
        return t.to(device=device, dtype=torch.float32)

    def dsm(self, online, x0: torch.Tensor, x1: torch.Tensor, labels=None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample ||g(x_t, t, t) - x0||^2 / c_out(t)^2, summed over dimensions (GCTM's DSM term)."""
        t = self.sample_dsm_times(x0.shape[0], generator, x0.device)
        x_t = interpolate(x0, x1, t)
        g = online.denoise(x_t, t, labels)  # g(x_t, t, t)
        c_out = _col(online.coefficients(t)[1], x0)
        return ((g.float() - x0) / c_out).flatten(1).square().sum(1)


class GCTMTerms:
    """GCTM's terms for `TrajectoryObjective` (Kim et al. 2024b, Alg. 1): pairs (x0, x1) from a coupling."""

    def __init__(self,
        loss: GCTMLoss,                 # the CTM term at time s and the DSM term
        coupling,                       # ctmtool.gctm.couplings.Coupling: pair(x, labels, generator) -> (x0,
                                        # x1)
        moments: dict,                  # {var0, var1, cov01} of the coupling, stored in every checkpoint
        flip_pairs: bool = False,       # random horizontal flips applied to x0 and x1 together (paired data)
        spec: str = "",                 # the coupling's spec, recorded in checkpoints
        double_every: int | None = None,  # curriculum: the grid's steps double every this many optimiser
                                          # steps
        fine_steps: int = 1024,         # ... up to this many (the reference's disc_steps)
        grid_range: tuple[float, float, float] = (0.002, 80.0, 7.0),  # sigma_min, sigma_max, rho of the grids
        extra_meta: dict | None = None,  # more for checkpoints (the shape of a class source: `class_source`)
    ):
        self.loss, self.coupling, self.flip_pairs, self.spec = loss, coupling, flip_pairs, spec
        self.extra_meta = dict(extra_meta or {})
        self.moments = {k: float(moments[k]) for k in ("var0", "var1", "cov01")}
        if "label_range" in moments:
            self.moments["label_range"] = [float(v) for v in moments["label_range"]]
        self.double_every, self.fine_steps, self.grid_range = double_every, fine_steps, grid_range
        self.base_steps = loss.grid.numel() - 1

    def new_step(self, cpu_gen, steps: int = 0) -> None:
        """GCTM draws its times per sample (1202kbs/GCTM); with the curriculum (`double_every`) the training
        grid of this step has min(fine, base * 2^(steps // double_every)) steps (train_gctm.py 94-95)."""
        if self.double_every is None:
            return
        n = curriculum_steps(self.base_steps, steps, self.double_every, self.fine_steps)
        if n + 1 != self.loss.grid.numel():
            self.loss.grid = gctm_times(n + 1, *self.grid_range).double()

    def pair(self, x, labels, gen, cpu_gen):
        x0, x1 = self.coupling.pair(x, labels, gen)
        if self.flip_pairs and x0.ndim == 4:
            flip = (torch.rand(x0.shape[0], generator=cpu_gen) < 0.5).to(x0.device)[:, None, None, None]
            x0, x1 = torch.where(flip, x0.flip(-1), x0), torch.where(flip, x1.flip(-1), x1)
        return x0, x1

    def ctm(self, online, target, teacher, pair, labels, gen, cpu_gen, dropout_seed):
        # no teacher: the Heun solver integrates the model's own EMA denoiser (`teacher` is the target here)
        return self.loss.ctm(online, teacher, *pair, labels, cpu_gen, dropout_seed)

    def dsm(self, online, pair, labels, gen):
        return self.loss.dsm(online, *pair, labels, gen)

    def estimate(self, online, target, pair, labels, gen, cpu_gen, dropout_seed):
        """GCTM training has no GAN term, so no discriminator-only step asks for fakes
        (`ctmtool.train.run.train` refuses gan.enabled for a preset with [gctm])."""
        raise TypeError("GCTM training has no GAN term: no discriminator step asks for GCTM estimates")

    def meta(self) -> dict:
        return {"moments": dict(self.moments), "coupling": self.spec,
                "grid": [round(float(t), 8) for t in self.loss.grid], **self.extra_meta}


def gctm_objective(
    preset: Preset,                     # resolved preset with a [gctm] section; distill = optimiser and
                                        # duration
    data_shape: tuple[int, ...],        # shape of one x0 (and x1): (C, H, W) or (D,)
    device: torch.device,
    coupling,                           # ctmtool.gctm.couplings.Coupling
    moments: dict,                      # {var0, var1, cov01} for GCTMPrecond
    flip_pairs: bool = False,           # see GCTMTerms
    compare_zero: bool = False,         # see GCTMLoss
) -> TrajectoryObjective:
    """GCTM training (Kim et al. 2024b, Alg. 1): L_CTM + lambda_DSM L_DSM on pairs from a coupling."""
    if preset.gctm is None:
        raise ValueError(f"preset {preset.name!r} has no [gctm] section")
    c, g, d = preset.ctm, preset.gctm, preset.diffusion
    torch.manual_seed(preset.distill.seed)
    # noise labels ln(t / (1 - t))/4 with t = 0 -> sigma_min and t = 1 -> sigma_max, as the reference's
    # network
    moments = {**moments, "label_range": [d.sigma_min, d.sigma_max]}
    source = coupling.source_state()  # the class Gaussians of a `latent` coupling travel with the model
    extra = {"class_source": list(source["source_means"].shape)} if source else {}
    net = build_precond("gctm", preset, data_shape, {"moments": moments, **extra})
    if source:
        net.set_class_source(**source)
    # pseudo-Huber c defaults to 0.00054 sqrt(D), as the reference
    distance = make_distance(c, math.prod(data_shape))
    fine = gctm_times(g.dsm_grid + 1, d.sigma_min, d.sigma_max, d.rho) if g.dsm_grid else None
    loss = GCTMLoss(gctm_times(g.grid, d.sigma_min, d.sigma_max, d.rho), g.max_steps, distance.to(device),
                    c.solver, g.dsm_times, d.p_mean, d.p_std, d.sigma_min, d.sigma_max, d.rho,
                    grid_fraction=g.dsm_grid_fraction, compare_zero=compare_zero, time_sampler=g.time_sampler,
                    beta=g.t_ctm_beta, fine_grid=fine)
    terms = GCTMTerms(loss, coupling, moments, flip_pairs, spec=g.coupling, double_every=g.double_every,
                      fine_steps=g.dsm_grid or 1024, grid_range=(d.sigma_min, d.sigma_max, d.rho),
                      extra_meta=extra)
    return TrajectoryObjective(preset, data_shape, device, "gctm", net, terms)
