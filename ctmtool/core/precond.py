"""Preconditioning: how a raw network F becomes a denoiser D(x, sigma) or a CTM jump G(x, t, s).

One class per scheme, as in EDM (Karras et al. 2022, Table 1):
- `EDMPrecond`, `VPPrecond`, `VEPrecond`: diffusion denoisers (teachers); VP/VE exist to run NVIDIA's
  published EDM checkpoints with the preconditioning they were trained with.
- `CTMPrecond`: the CTM student (Kim et al. 2024, Eq. 6-7): g(x,t,s) with EDM coefficients driven by
  t and a second noise label for s, and the jump G(x,t,s) = (s/t) x + (1 - s/t) g(x,t,s).
- `GCTMPrecond`: the generalised CTM between two distributions (Kim et al. 2024b, Sec. 3): the same
  jump on the flow-matching interpolation x_t = (1 - t) x0 + t x1, coefficients from the coupling's
  second moments.

Every model offers `denoise(x, sigma, labels)`: E[x0 | x] at noise level sigma; trajectory models also
offer `g(x, t, s, labels)` and `jump(x, t, s, labels)`. Noise levels are tensors of shape (B,) or scalars.

The trajectory interface is where CTM and GCTM differ, and the only place: each trajectory model knows
its default schedule for n jumps (`default_schedule`), how a point at level s is moved back up to level
t between jumps (`renoise`), how data is taken to level t (`perturb`), where its source starts
(`prior`), whether that source is Gaussian (`gaussian_source`: it can generate and edit), and whether it
defines a data density (`has_density`). Samplers, editing and likelihood call these, never `kind`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ctmtool.core.schedules import ctm_default_schedule, gctm_times, karras_sigmas


def _bcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A per-sample level (B,) or scalar, shaped to broadcast against x (B, ...), in float32."""
    v = torch.as_tensor(v, device=x.device, dtype=torch.float32)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _flat(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, device=x.device, dtype=torch.float32)
    return v.expand(x.shape[0]) if v.ndim == 0 else v.reshape(-1)


class EDMPrecond(nn.Module):
    """Karras et al. 2022, Table 1 (EDM): D = c_skip x + c_out F(c_in x, ln(sigma)/4)."""

    has_density = True  # a denoiser gives the score, hence the PF-ODE likelihood

    def __init__(self,
        net: nn.Module,                 # raw network F(x, noise_label, s_label=None, labels=None)
        sigma_data: float = 0.5,        # expected data standard deviation
        sigma_min: float = 0.002,       # lowest supported noise level
        sigma_max: float = 80.0,        # highest supported noise level
    ):
        super().__init__()
        self.net, self.sigma_data, self.sigma_min, self.sigma_max = net, sigma_data, sigma_min, sigma_max

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = self.coefficients(_flat(sigma, x))
        c_skip, c_out, c_in = (_bcast(c, x) for c in (c_skip, c_out, c_in))
        f = self.net((c_in * x).to(x.dtype), c_noise, labels=labels)
        return c_skip * x + c_out * f.float()

    forward = denoise


class VPPrecond(EDMPrecond):
    """Song et al. 2021 VP (Karras et al. 2022, Table 1): c_skip 1, c_out -sigma, c_noise (M-1) t(sigma)."""

    def __init__(self, net: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, sigma_data: float = 0.5, sigma_min: float | None = None,
                 sigma_max: float | None = None):
        # the sampling range defaults to the VP process's own; EDM's generate.py clamps it to [0.002, 80]
        super().__init__(net, sigma_data=sigma_data,
                         sigma_min=sigma_min or self._sigma(epsilon_t, beta_d, beta_min),
                         sigma_max=sigma_max or self._sigma(1.0, beta_d, beta_min))
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    @staticmethod
    def _sigma(t: float, beta_d: float, beta_min: float) -> float:
        return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)

    def coefficients(self, sigma: torch.Tensor):
        t = ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * t


class VEPrecond(EDMPrecond):
    """Song et al. 2021 VE (Karras et al. 2022, Table 1): c_skip 1, c_out sigma, c_in 1, c_noise
    ln(sigma/2)."""

    def __init__(self, net: nn.Module, sigma_min: float = 0.02, sigma_max: float = 100.0,
                 sigma_data: float = 0.5):
        super().__init__(net, sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max)

    def coefficients(self, sigma: torch.Tensor):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


class NoisePath:
    """The trajectory interface of the Gaussian-noise path x_t = x0 + t n (EDM's VE form), levels in
    [sigma_min, sigma_max]: CTM students and the exact Gaussian-mixture trajectories share it."""

    sigma_min: float
    sigma_max: float
    rho: float = 7.0
    has_density = True
    gaussian_source = True
    translates = False
    level_unit = "sigma"  # its levels are noise levels sigma

    def default_schedule(self, nfe: int) -> torch.Tensor:
        """Kim et al. 2024, Sec. 5: the Karras grid with nfe + 1 points, sigma_max to sigma_min."""
        return ctm_default_schedule(nfe, self.sigma_min, self.sigma_max, self.rho)

    def renoise(self, x, s, t, z):
        """Kim et al. 2024, Alg. 1: x + sqrt(t^2 - s^2) z."""
        return x + math.sqrt(max(t**2 - s**2, 0.0)) * z

    def perturb(self, x0, t, z):
        """x0 + t z (the variance-exploding process of EDM)."""
        return x0 + t * z

    def strength_level(self, strength: float) -> float:
        """sigma = strength / (1 - strength), capped at sigma_max (reached at strength 1): x / (1 - t) = x +
        sigma n."""
        sigma = self.sigma_max if strength >= 1 else strength / (1 - strength)
        return float(min(max(sigma, self.sigma_min * 1.0001), self.sigma_max))

    def edit_schedule(self, level: float, nfe: int) -> torch.Tensor:
        if nfe == 1:
            return torch.tensor([level, self.sigma_min], dtype=torch.float64)
        return karras_sigmas(nfe + 1, self.sigma_min, level, self.rho)

    def check_level(self, level: float) -> None:
        if not self.sigma_min < level <= self.sigma_max:
            raise ValueError(f"noise level {level:g} is outside this CTM's range ({self.sigma_min:g}, "
                             f"{self.sigma_max:g}]")


class TrajectoryModel(nn.Module):
    """Shared CTM/GCTM machinery: g(x,t,s) from coefficients of t, and the jump G (Kim et al. 2024, Eq. 7)."""

    has_density = True  # g(x, t, t) is a denoiser of the Gaussian-noise process
    gaussian_source = True  # trajectories start from Gaussian noise: the model can generate and edit
    translates = False  # its source is another distribution's samples, given as they are (GCTM)
    level_unit = "sigma"  # what its levels are: noise levels sigma (CTM) or interpolation times t (GCTM)
    checkpoint_kind = ""  # the `kind` of its checkpoints (ctm | gctm)
    source_classes = 0  # classes of a class-Gaussian source (GCTM coupling `latent`); 0: the source has none

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def coefficients(self, t: torch.Tensor):  # -> c_skip, c_out, c_in, c_noise
        raise NotImplementedError

    # the trajectory interface (what a sampler or an editor needs to know) ----------------------------------
    def default_schedule(self, nfe: int) -> torch.Tensor:
        """The levels of `nfe` jumps from the start of the trajectory to its end (float64, decreasing)."""
        raise NotImplementedError

    def renoise(self, x: torch.Tensor, s: float, t: float, z: torch.Tensor) -> torch.Tensor:
        """Move x from level s up to level t >= s with fresh noise z (between gamma-sampling jumps)."""
        raise NotImplementedError

    def perturb(self, x0: torch.Tensor, t: float, z: torch.Tensor) -> torch.Tensor:
        """x_t for data x0 and noise z: the forward process at level t (SDEdit's starting point)."""
        raise NotImplementedError

    def prior(self, z: torch.Tensor) -> torch.Tensor:
        """A draw at the start of the trajectory from standard-normal z (where generation begins)."""
        return self.perturb(torch.zeros_like(z), float(self.default_schedule(1)[0]), z)

    def strength_level(self, strength: float) -> float:
        """An editing strength in (0, 1] as this model's level (the same signal-to-noise ratio for every
        model)."""
        raise NotImplementedError

    def move_latent(self, x: torch.Tensor, from_labels: torch.Tensor,
                    to_labels: torch.Tensor) -> torch.Tensor:
        """Source points x of classes `from_labels` moved to classes `to_labels` (latent manipulation)."""
        raise ValueError("this model's source has no classes to move a latent between; latent manipulation "
                         "needs a GCTM trained with coupling 'latent'")

    def edit_schedule(self, level: float, nfe: int) -> torch.Tensor:
        """Levels of `nfe` jumps from `level` to the end of the trajectory."""
        raise NotImplementedError

    def check_level(self, level: float) -> None:
        """Refuse an editing level this model cannot start from (ValueError;
        `ctmtool.jobs.plan.check_editable` shows it as the user's error)."""
        raise NotImplementedError

    def g(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        """g(x_t, t, s) = c_skip(t) x_t + c_out(t) F(c_in(t) x_t, c_noise(t), c_noise(s)); g(x,t,t) is a
        denoiser."""
        c_skip, c_out, c_in, noise_t = self.coefficients(_flat(t, x))
        c_skip, c_out, c_in = (_bcast(c, x) for c in (c_skip, c_out, c_in))
        noise_s = self.coefficients(_flat(s, x).clamp_min(1e-12))[3]  # s = 0 would give ln 0
        f = self.net((c_in * x).to(x.dtype), noise_t, noise_s, labels=labels)
        return c_skip * x + c_out * f.float()

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        """G(x_t, t, s) = (s/t) x_t + (1 - s/t) g(x_t, t, s): the ODE solution from t to s (Eq. 7)."""
        ratio = _bcast(s, x) / _bcast(t, x)
        return ratio * x + (1 - ratio) * self.g(x, t, s, labels)

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        return self.g(x, sigma, sigma, labels)

    forward = jump


class CTMPrecond(NoisePath, TrajectoryModel):
    """Kim et al. 2024, Sec. 4: EDM coefficients driven by t, c_noise = ln(level)/4 for both t and s.

    The paper's student is always EDM (ctm-cifar10 copies a VP teacher's weights into an EDM-coefficient
    student). Scheme "vp" / "ve" (`ctm.student_precond = "teacher"`) uses the teacher's coefficients
    instead, so a student from an imported VP/VE teacher starts as exactly the teacher's denoiser at s = t."""

    SCHEMES = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}
    checkpoint_kind = "ctm"

    @classmethod
    def from_preset(cls, net: nn.Module, preset, meta: dict, gaussian_source: bool) -> CTMPrecond:
        """The student of `preset` around `net` (always a Gaussian source: `gaussian_source` is not used)."""
        d = preset.diffusion
        return cls(net, d.sigma_data, d.sigma_min, d.sigma_max,
                   scheme=d.precond if preset.ctm.student_precond == "teacher" else "edm", rho=d.rho)

    def __init__(self,
        net: nn.Module,                 # raw network F(x, noise_t, noise_s, labels=None)
        sigma_data: float = 0.5,        # expected data standard deviation
        sigma_min: float = 0.002,       # lowest noise level (the end of every trajectory)
        sigma_max: float = 80.0,        # highest noise level (where sampling starts)
        scheme: str = "edm",            # coefficient scheme: edm, or the teacher's vp / ve
        rho: float = 7.0,               # Karras curvature of the default sampling schedules
    ):
        super().__init__(net)
        self.sigma_data, self.sigma_min, self.sigma_max, self.scheme = (sigma_data, sigma_min, sigma_max,
                                                                        scheme)
        self.rho = rho
        if scheme == "vp":
            self.beta_d, self.beta_min, self.M = 19.9, 0.1, 1000

    def coefficients(self, t: torch.Tensor):
        return self.SCHEMES[self.scheme].coefficients(self, t)  # type: ignore[arg-type]


class GCTMPrecond(TrajectoryModel):
    """Kim et al. 2024b (GCTM), Sec. 3.2: x_t = (1-t) x0 + t x1; coefficients from Var x0, Var x1, Cov(x0,
    x1)."""

    has_density = False  # it transports one distribution to another: no data density
    translates = True  # `translate` maps given sources x1 to the data side
    level_unit = "t"
    checkpoint_kind = "gctm"

    @classmethod
    def from_preset(cls, net: nn.Module, preset, meta: dict, gaussian_source: bool) -> GCTMPrecond:
        """The GCTM of `preset` around `net`: coupling moments from `meta` (the checkpoint's), the time grid
        from preset.diffusion, the source's std from preset.gctm.source_noise."""
        m, g, d = meta.get("moments", {}), preset.gctm, preset.diffusion
        return cls(net, var0=m.get("var0", d.sigma_data**2), var1=m.get("var1", 1.0),
                   cov01=m.get("cov01", 0.0), grid_sigmas=(d.sigma_min, d.sigma_max, d.rho),
                   gaussian_source=gaussian_source,
                   source_std=math.sqrt(1.0 + (g.source_noise if g else 0.0) ** 2),
                   label_range=tuple(m["label_range"]) if "label_range" in m else None,
                   class_source=tuple(meta["class_source"]) if "class_source" in meta else None)

    def __init__(self,
        net: nn.Module,                 # raw network F(x, noise_t, noise_s, labels=None)
        var0: float = 0.25,             # per-dimension variance of the target (data) side x0
        var1: float = 1.0,              # per-dimension variance of the source side x1
        cov01: float = 0.0,             # per-dimension covariance of x0 and x1 under the coupling
        t_min: float = 1e-4,            # levels are clamped to [t_min, 1 - t_min] for the labels
        grid_sigmas: tuple[float, float, float] = (0.002, 80.0, 7.0),  # (sigma_min, sigma_max, rho) of the
                                                                       # time grid
        gaussian_source: bool = True,   # the source x1 is Gaussian noise (independent / ot couplings)
        source_std: float = 1.0,        # per-dimension std of a Gaussian source (sqrt(1 + source_noise^2))
        label_range: tuple[float, float] | None = None,  # clamp t/(1-t) to [smin, smax] instead (official
                                                         # GCTM)
        class_source: tuple[int, ...] | None = None,  # (K, *item shape): K class Gaussians (`latent`)
    ):
        super().__init__(net)
        self.var0, self.var1, self.cov01, self.t_min = var0, var1, cov01, t_min
        if class_source is not None:  # filled by set_class_source, or by a checkpoint's state dict
            self.source_classes = int(class_source[0])
            self.register_buffer("source_means", torch.zeros(class_source))
            self.register_buffer("source_stds", torch.ones(class_source))
        self.label_range = label_range
        self.sigma_min, self.sigma_max = 0.0, 1.0
        self.grid_sigmas, self.gaussian_source, self.source_std = (tuple(grid_sigmas), gaussian_source,
                                                                   source_std)

    def coefficients(self, t: torch.Tensor):
        var_t = (1 - t) ** 2 * self.var0 + t**2 * self.var1 + 2 * t * (1 - t) * self.cov01
        cov0t = (1 - t) * self.var0 + t * self.cov01
        c_skip = cov0t / var_t
        c_out = (self.var0 - cov0t**2 / var_t).clamp_min(1e-12).sqrt()
        c_in = 1 / var_t.sqrt()
        if self.label_range is not None:  # 1202kbs/GCTM networks.py: t = 0 -> smin, t = 1 -> smax
            lo, hi = self.label_range
            ratio = torch.where(t >= 1, torch.full_like(t, hi), t / (1 - t).clamp_min(1e-30))
            return c_skip, c_out, c_in, ratio.clamp(lo, hi).log() / 4
        tc = t.clamp(self.t_min, 1 - self.t_min)
        return c_skip, c_out, c_in, (tc / (1 - tc)).log() / 4

    def default_schedule(self, nfe: int) -> torch.Tensor:
        """The training time grid with nfe + 1 points (`schedules.gctm_times`), 1 -> 0."""
        if nfe < 1:
            raise ValueError(f"nfe must be at least 1, got {nfe}")
        return gctm_times(nfe + 1, *self.grid_sigmas)

    def renoise(self, x, s, t, z):
        """Along x_t = (1-t) x0 + t n: x <- a x + sqrt(t^2 - (a s)^2) std z with a = (1-t)/(1-s)."""
        a = (1 - t) / (1 - s)
        return a * x + math.sqrt(max(t**2 - (a * s) ** 2, 0.0)) * self.source_std * z

    def perturb(self, x0, t, z):
        """(1 - t) x0 + t std z (GCTM Eq. 8 with a Gaussian source)."""
        return (1 - t) * x0 + t * self.source_std * z

    def strength_level(self, strength: float) -> float:
        return float(strength)

    @torch.no_grad()
    def set_class_source(self, source_means: torch.Tensor, source_stds: torch.Tensor) -> None:
        """Store the class Gaussians of a `latent` coupling (`LatentCoupling.source_state`)."""
        if not self.source_classes:
            raise ValueError("this GCTM was built without a class source (meta 'class_source')")
        self.source_means.copy_(source_means)
        self.source_stds.copy_(source_stds)

    def move_latent(self, x, from_labels, to_labels):
        """The affine map between class Gaussians, mu_b + (s_b / s_a)(x - mu_a): the optimal transport map
        from N(mu_a, diag s_a^2) to N(mu_b, diag s_b^2); a shift by mu_b - mu_a when the stds are equal."""
        if not self.source_classes:
            return super().move_latent(x, from_labels, to_labels)
        a, b = (y.reshape(-1).long().to(x.device) for y in (from_labels, to_labels))
        for y in (a, b):
            if len(y) != len(x) or int(y.min()) < 0 or int(y.max()) >= self.source_classes:
                raise ValueError(f"one class in 0..{self.source_classes - 1} per item is needed")
        mu, sd = self.source_means.to(x.dtype), self.source_stds.to(x.dtype)
        return mu[b] + sd[b] / sd[a] * (x - mu[a])

    def edit_schedule(self, level: float, nfe: int) -> torch.Tensor:
        """Karras spacing in sigma = t / (1 - t) below `level`, mapped back to time; the grid itself at level
        1."""
        if level >= 1.0:
            return self.default_schedule(nfe)
        smin, _, rho = self.grid_sigmas
        top = level / (1 - level)
        t = karras_sigmas(nfe + 1, min(smin, top / 2), top, rho)
        t = t / (1 + t)
        t[0], t[-1] = level, 0.0
        return t

    def check_level(self, level: float) -> None:
        if not self.gaussian_source:
            raise ValueError("this GCTM maps its source distribution to the data, not noise to data, so "
                            "SDEdit cannot re-noise an image for it; use a CTM or a GCTM trained with "
                            "coupling 'independent' or 'ot'")
        if not 0.0 < level <= 1.0:
            raise ValueError(f"GCTM time {level:g} is outside (0, 1]")

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        # at t = 0 there is nothing left to transport
        ratio = _bcast(s, x) / _bcast(t, x).clamp_min(1e-12)
        return ratio * x + (1 - ratio) * self.g(x, t, s, labels)
