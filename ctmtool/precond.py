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
"""

from __future__ import annotations

import math

import torch
from torch import nn


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

    kind = "denoiser"

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
        s = _bcast(sigma, x)
        c_skip, c_out, c_in, _ = self.coefficients(s)
        c_noise = self.coefficients(_flat(sigma, x))[3]
        f = self.net((c_in * x).to(x.dtype), c_noise, labels=labels)
        return c_skip * x + c_out * f.float()

    forward = denoise


class VPPrecond(EDMPrecond):
    """Song et al. 2021 VP (Karras et al. 2022, Table 1): c_skip 1, c_out -sigma, c_noise (M-1) t(sigma)."""

    def __init__(self, net: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, sigma_data: float = 0.5, sigma_min: float | None = None,
                 sigma_max: float | None = None):
        # the sampling range defaults to the VP process's own; EDM's generate.py clamps it to [0.002, 80]
        super().__init__(net, sigma_data=sigma_data, sigma_min=sigma_min or self._sigma(epsilon_t, beta_d, beta_min),
                         sigma_max=sigma_max or self._sigma(1.0, beta_d, beta_min))
        self.beta_d, self.beta_min, self.M = beta_d, beta_min, M

    @staticmethod
    def _sigma(t: float, beta_d: float, beta_min: float) -> float:
        return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)

    def coefficients(self, sigma: torch.Tensor):
        t = ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * t


class VEPrecond(EDMPrecond):
    """Song et al. 2021 VE (Karras et al. 2022, Table 1): c_skip 1, c_out sigma, c_in 1, c_noise ln(sigma/2)."""

    def __init__(self, net: nn.Module, sigma_min: float = 0.02, sigma_max: float = 100.0, sigma_data: float = 0.5):
        super().__init__(net, sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max)

    def coefficients(self, sigma: torch.Tensor):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


class TrajectoryModel(nn.Module):
    """Shared CTM/GCTM machinery: g(x,t,s) from coefficients of t, and the jump G (Kim et al. 2024, Eq. 7)."""

    kind = "trajectory"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def coefficients(self, t: torch.Tensor):  # -> c_skip, c_out, c_in, c_noise
        raise NotImplementedError

    def g(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        """g(x_t, t, s) = c_skip(t) x_t + c_out(t) F(c_in(t) x_t, c_noise(t), c_noise(s)); g(x,t,t) is a denoiser."""
        c_skip, c_out, c_in, _ = self.coefficients(_bcast(t, x))
        noise_t = self.coefficients(_flat(t, x))[3]
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


class CTMPrecond(TrajectoryModel):
    """Kim et al. 2024, Sec. 4: EDM coefficients driven by t, c_noise = ln(level)/4 for both t and s.

    The paper's student is always EDM (ctm-cifar10 copies a VP teacher's weights into an EDM-coefficient
    student). Scheme "vp" / "ve" (`ctm.student_precond = "teacher"`) uses the teacher's coefficients
    instead, so a student from an imported VP/VE teacher starts as exactly the teacher's denoiser at s = t."""

    SCHEMES = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}

    def __init__(self,
        net: nn.Module,                 # raw network F(x, noise_t, noise_s, labels=None)
        sigma_data: float = 0.5,        # expected data standard deviation
        sigma_min: float = 0.002,       # lowest noise level (the end of every trajectory)
        sigma_max: float = 80.0,        # highest noise level (where sampling starts)
        scheme: str = "edm",            # coefficient scheme: edm, or the teacher's vp / ve
    ):
        super().__init__(net)
        self.sigma_data, self.sigma_min, self.sigma_max, self.scheme = sigma_data, sigma_min, sigma_max, scheme
        if scheme == "vp":
            self.beta_d, self.beta_min, self.M = 19.9, 0.1, 1000

    def coefficients(self, t: torch.Tensor):
        return self.SCHEMES[self.scheme].coefficients(self, t)  # type: ignore[arg-type]


class GCTMPrecond(TrajectoryModel):
    """Kim et al. 2024b (GCTM), Sec. 3.2: x_t = (1-t) x0 + t x1; coefficients from Var x0, Var x1, Cov(x0, x1)."""

    def __init__(self,
        net: nn.Module,                 # raw network F(x, noise_t, noise_s, labels=None)
        var0: float = 0.25,             # per-dimension variance of the target (data) side x0
        var1: float = 1.0,              # per-dimension variance of the source side x1
        cov01: float = 0.0,             # per-dimension covariance of x0 and x1 under the coupling
        t_min: float = 1e-4,            # levels are clamped to [t_min, 1 - t_min] for the labels
        label_range: tuple[float, float] | None = None,  # clamp t/(1-t) to [smin, smax] instead (official GCTM)
    ):
        super().__init__(net)
        self.var0, self.var1, self.cov01, self.t_min = var0, var1, cov01, t_min
        self.label_range = label_range
        self.sigma_min, self.sigma_max = 0.0, 1.0

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

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        # at t = 0 there is nothing left to transport
        ratio = _bcast(s, x) / _bcast(t, x).clamp_min(1e-12)
        return ratio * x + (1 - ratio) * self.g(x, t, s, labels)
