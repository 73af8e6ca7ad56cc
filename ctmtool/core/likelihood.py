"""Likelihoods of data under a diffusion teacher or a CTM: the probability-flow ODE and the ELBO.

What is computed. Every model here defines the VE/EDM family p_sigma = p_data * N(0, sigma^2 I) through its
denoiser D(x, sigma) ~ E[x0 | x] (Tweedie: score = (D - x) / sigma^2). Both estimators return
log p_{sigma_min}(x): the model's density at the lowest noise level, i.e. of the data convolved with
N(0, sigma_min^2 I), which is where sampling stops. For uniformly dequantised 8-bit images this is the
standard quantity (Song et al. 2021, App. D.2); with the exact denoiser of a Gaussian mixture it equals
`GaussianMixture.log_prob(x, sigma_min)`.

- `ode_log_prob`: the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma integrated from sigma_min
  (x = the data point) to sigma_max with the instantaneous change of variables (Chen et al. 2018, Thm. 1):
  log p_{sigma_min}(x) = log N(x(sigma_max); 0, sigma_max^2 I) + int div_x(drift) dsigma. It is solved in
  u = ln sigma (dx/du = x - D), where the dynamics are evenly spread; the divergence is exact (D backward
  passes) or Hutchinson's estimate with probes held fixed over the solve (Grathwohl et al. 2019).
- `elbo_log_prob`: the continuous-time variational bound of the reverse SDE (Song et al. 2021b, Thm. 1 /
  Kingma et al. 2021, Eq. 17) for the same quantity, with ln(sigma) importance-sampled: a lower bound on
  log p (an upper bound on the NLL), tight when the denoiser is exact.
- `evaluate`: a data set in batches; images are uniformly dequantised, x = (v + u) / 128 - 1 with
  v in {0..255}, u ~ U[0, 1)^D, and reported in the [0, 256) space of v + u, where the density of the
  dequantised value bounds the discrete probability: -log P(v) <= -log p(x) + D ln 128 nats, and
  bits/dim = (-log p(x) + D ln 128) / (D ln 2) = -log p(x) / (D ln 2) + 7. See docs/likelihood.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torchdiffeq import odeint

from ctmtool.data.base import Dataset

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_METHODS = ("rk4", "midpoint", "heun3", "euler")
DIVERGENCES = ("exact", "hutchinson")
TIMES = ("karras", "log")
PROBE_DISTS = ("rademacher", "gaussian")
DRAW_AVERAGES = ("logmeanexp", "mean")
DEQUANT_SCALE = 128.0  # x = (v + u) / 128 - 1 maps [0, 256) onto [-1, 1)

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Estimate:
    """Per-item log p_{sigma_min}(x) in nats, its Monte-Carlo standard error (0 when exact), and the work
    done."""

    log_prob: torch.Tensor  # (B,)
    stderr: torch.Tensor  # (B,); NaN where it cannot be estimated (a single Hutchinson probe)
    nfe: int  # denoiser evaluations (forward passes over the batch)


Estimator = Callable[[torch.Tensor, "torch.Tensor | None", torch.Generator], Estimate]


@dataclass(frozen=True)
class ODEOptions:
    """How the probability-flow ODE is solved and its divergence estimated."""

    divergence: str = "exact"  # exact | hutchinson
    probes: int = 1  # Hutchinson probes per item (each fixed over the whole solve)
    probe_dist: str = "rademacher"  # rademacher | gaussian
    rtol: float = 1e-3  # adaptive-solver tolerances (the reference setting is 1e-3 / 1e-3)
    atol: float = 1e-3
    method: str = "dopri5"  # a torchdiffeq method: adaptive (ADAPTIVE_METHODS) or fixed-step (FIXED_METHODS)
    steps: int = 100  # steps in the time variable for fixed-step methods
    time: str = "karras"  # the ODE's time variable: karras (v = sigma^(1/rho)) | log (u = ln sigma)
    rho: float = 7.0  # the Karras variable's exponent (EDM's sampling schedule)
    max_rows: int = 8192  # most items (batch x probes) per denoiser pass; more probes take several passes

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; choose one of "
                             f"{', '.join(DIVERGENCES)}")
        if self.probe_dist not in PROBE_DISTS:
            raise ValueError(f"unknown probe distribution {self.probe_dist!r}; choose one of "
                             f"{', '.join(PROBE_DISTS)}")
        if self.method not in ADAPTIVE_METHODS + FIXED_METHODS:
            raise ValueError(f"unknown ODE method {self.method!r}; choose one of "
                             f"{', '.join(ADAPTIVE_METHODS + FIXED_METHODS)}")
        if self.time not in TIMES:
            raise ValueError(f"unknown ODE time variable {self.time!r}; choose one of {', '.join(TIMES)}")
        if not self.rho > 0:
            raise ValueError(f"rho must be positive (got {self.rho})")
        if self.probes < 1 or self.steps < 1 or self.max_rows < 1:
            raise ValueError("probes, steps and max_rows must be at least 1")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be positive (got {self.rtol}, {self.atol})")


def model_denoiser(model) -> Denoiser:
    """The denoiser D(x, sigma, labels) of a loaded `Model`: a teacher's D, a CTM's g(x, t, t) (Kim et al.
    2024, Eq. 7). A model without a data density (a GCTM) is a ValueError
    (`ctmtool.jobs.likelihood.check_density` refuses it for a user first)."""
    if not getattr(model.net, "has_density", True):
        raise ValueError(f"a {model.kind.upper()} defines no data density (`has_density` is False): it "
                         "has no denoiser to take likelihoods with")
    return model.net.denoise


def gaussian_log_prob(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; 0, sigma^2 I) per item: the prior at sigma_max (B,)."""
    d = x[0].numel()
    sq = x.reshape(x.shape[0], -1).pow(2).sum(1)
    return -0.5 * d * math.log(2 * math.pi * sigma**2) - sq / (2 * sigma**2)


def draw_probes(shape: tuple[int, ...], k: int, dist: str, generator: torch.Generator, dtype,
                device) -> torch.Tensor:
    """k probe vectors per item (k, B, ...): Rademacher (+-1) or standard Gaussian (Hutchinson 1989)."""
    if dist == "rademacher":
        e = torch.randint(0, 2, (k, *shape), generator=generator).to(torch.float64) * 2 - 1
    else:
        e = torch.randn((k, *shape), generator=generator, dtype=torch.float64)
    return e.to(device=device, dtype=dtype)


def _basis_probes(shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    """The D unit vectors as probes (D, B, ...): sum_i e_i^T J e_i = tr J, the exact divergence."""
    b, d = shape[0], int(np.prod(shape[1:]))
    eye = torch.eye(d, dtype=dtype, device=device)
    return eye[:, None, :].expand(d, b, d).reshape(d, *shape)


def _probe_traces(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor, labels, probes: torch.Tensor,
                  max_rows: int):
    """D(x, sigma) and e_k^T (dD/dx) e_k for every probe (B, K), a few probes per forward and backward pass.

    The batch is replicated once per probe; items are independent, so the gradient of sum_k <D(x_k), e_k>
    with respect to the copies x_k holds the vector-Jacobian products J^T e_k of every copy at once.
    """
    k, b = probes.shape[0], x.shape[0]
    per_pass = max(1, max_rows // b)
    den, quads = None, []
    for k0 in range(0, k, per_pass):
        e = probes[k0:k0 + per_pass]
        kk = len(e)
        with torch.enable_grad():
            xg = x.detach().expand(kk, *x.shape).reshape(kk * b, *x.shape[1:]).requires_grad_(True)
            out = denoise(xg, sigma.repeat(kk), None if labels is None else labels.repeat(kk))
            flat = e.reshape(kk * b, *x.shape[1:])
            (vjp,) = torch.autograd.grad((out * flat).sum(), xg)
        quads.append((vjp * flat).reshape(kk, b, -1).sum(-1).t())
        den = out[:b].detach() if den is None else den
    return den, torch.cat(quads, 1).detach()


def ode_log_prob(denoise: Denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float,
                 labels: torch.Tensor | None = None, options: ODEOptions = ODEOptions(),
                 generator: torch.Generator | None = None) -> Estimate:
    """log p_{sigma_min}(x) by the probability-flow ODE and the instantaneous change of variables (Song et al.
    2021, Eq. 39-40)."""
    b, d = x.shape[0], x[0].numel()
    exact = options.divergence == "exact"
    if exact:
        probes = _basis_probes(tuple(x.shape), x.dtype, x.device)
    else:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        probes = draw_probes(tuple(x.shape), options.probes, options.probe_dist, generator, x.dtype, x.device)
    nfe = [0]

    rho = options.rho
    if options.time == "log":  # u = ln sigma: dsigma/du = sigma
        span = (math.log(sigma_min), math.log(sigma_max))
        def level(v):
            return v.exp(), 1.0
    # v = sigma^(1/rho), EDM's sampling time: dsigma/dv = rho sigma / v (fewer steps for the same tolerance)
    else:
        span = (sigma_min ** (1 / rho), sigma_max ** (1 / rho))
        def level(v):
            return v**rho, rho / v

    def drift(v: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """d/dv (x, int div) = (dsigma/dv / sigma) (x - D(x, sigma), D - tr(dD/dx)); levels in x's dtype."""
        xs = state[0]
        sigma, scale = level(v)
        den, quad = _probe_traces(denoise, xs, sigma.to(xs.dtype).expand(b), labels, probes, options.max_rows)
        nfe[0] += 1
        tr = quad.sum(1, keepdim=True) if exact else quad
        return ((xs - den) * scale).to(xs.dtype), ((d - tr) * scale).to(xs.dtype)

    u = torch.tensor(span, dtype=x.dtype, device=x.device)
    state0 = (x, torch.zeros(b, 1 if exact else len(probes), dtype=x.dtype, device=x.device))
    kw = {"rtol": options.rtol, "atol": options.atol} if options.method in ADAPTIVE_METHODS else \
        {"options": {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], options.steps + 1,
                                                                          dtype=t.dtype, device=t.device)}}
    with torch.no_grad():
        xs, div = odeint(drift, state0, u, method=options.method, **kw)
    logp = gaussian_log_prob(xs[-1], sigma_max)[:, None] + div[-1]  # (B, K)
    if exact:
        stderr = torch.zeros(b, dtype=x.dtype, device=x.device)
    elif logp.shape[1] > 1:
        stderr = logp.std(1) / math.sqrt(logp.shape[1])
    else:
        stderr = torch.full((b,), float("nan"), dtype=x.dtype, device=x.device)
    return Estimate(logp.mean(1), stderr, nfe[0])


def elbo_log_prob(denoise: Denoiser, x: torch.Tensor, sigma_min: float, sigma_max: float,
                  labels: torch.Tensor | None = None, samples: int = 128,
                  generator: torch.Generator | None = None, max_rows: int = 4096) -> Estimate:
    """A lower bound on log p_{sigma_min}(x): the reverse-SDE ELBO (Song et al. 2021b, Thm. 1), ln(sigma) ~
    uniform.

    With z = x + tau eps, tau^2 = sigma^2 - sigma_min^2 and L = ln(sigma_max / sigma_min), the bound reads
    -log p(x) <= -E log N(x + tau_max eps; 0, sigma_max^2 I) - D (L + (1 - sigma_min^2/sigma_max^2) / 2)
                 + L E_{ln sigma, eps} [ |D(z) - x|^2 / sigma^2 + 2 sigma_min^2 (D(z) - x).eps / (tau sigma^2)
                 ],
    the second line evaluated with antithetic pairs (eps, -eps); docs/likelihood.md derives it.
    """
    if samples < 2:
        raise ValueError(f"the ELBO needs at least 2 Monte-Carlo samples per item (got {samples})")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    b, d = x.shape[0], x[0].numel()
    span = math.log(sigma_max / sigma_min)
    xf = x.reshape(b, 1, d)
    terms = []
    chunk = max(1, max_rows // (2 * b))
    with torch.no_grad():
        for k0 in range(0, samples, chunk):
            k = min(chunk, samples - k0)
            strata = torch.arange(k0, k0 + k, dtype=torch.float64)
            w = (strata + 1 - torch.rand(b, k, generator=generator, dtype=torch.float64)) / samples  # (0, 1]
            eps = torch.randn(b, k, d, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
            sigma = (sigma_min * torch.exp(w * span)).to(x.device)
            tau = (sigma_min * torch.expm1(2 * w * span).sqrt()).to(x.device)
            step = (tau[..., None] * eps).to(x.dtype)
            z = torch.cat([xf + step, xf - step]).reshape(2 * b * k, *x.shape[1:])
            lab = None if labels is None else labels.repeat_interleave(k).repeat(2)
            den = denoise(z, sigma.reshape(-1).repeat(2), lab).reshape(2, b, k, d).to(torch.float64)
            plus, minus = den[0] - xf.double(), den[1] - xf.double()
            s2 = sigma**2
            r = (plus.pow(2).sum(-1) + minus.pow(2).sum(-1)) / (2 * s2) \
                + sigma_min**2 * ((plus - minus) * eps.double()).sum(-1) / (tau * s2)
            terms.append(r)
    r = torch.cat(terms, 1)  # (B, samples)
    tau_max2 = sigma_max**2 - sigma_min**2
    prior = 0.5 * d * math.log(2 * math.pi * sigma_max**2) \
        + (xf.double().pow(2).sum((1, 2)) + d * tau_max2) / (2 * sigma_max**2)
    fixed = -d * (span + 0.5 * (1 - sigma_min**2 / sigma_max**2))
    nll = prior + fixed + span * r.mean(1)
    # collapsed strata: neighbours as one stratum of two, E (r1 - r2)^2 >= Var r1 + Var r2 (an odd last one
    # scaled in)
    pairs = r[:, : samples // 2 * 2].reshape(b, -1, 2)
    var_sum = (pairs[..., 0] - pairs[..., 1]).pow(2).sum(1) * samples / (2 * (samples // 2))
    stderr = span * var_sum.sqrt() / samples
    return Estimate((-nll).to(x.dtype), stderr.to(x.dtype), 2 * samples)


def make_estimator(denoise: Denoiser, sigma_min: float, sigma_max: float, method: str = "ode",
                   ode: ODEOptions = ODEOptions(), elbo_samples: int = 128) -> Estimator:
    """Bind a denoiser and its noise range to the ODE or ELBO estimator: (x, labels, generator) ->
    Estimate."""
    if method == "ode":
        return lambda x, labels, gen: ode_log_prob(denoise, x, sigma_min, sigma_max, labels, ode, gen)
    if method == "elbo":
        return (lambda x, labels,
                gen: elbo_log_prob(denoise, x, sigma_min, sigma_max, labels, elbo_samples, gen))
    raise ValueError(f"unknown likelihood method {method!r}; choose ode or elbo")


# --------------------------------------------------------------------------------------------------
# Images: dequantisation and units


def dequantize(v: torch.Tensor, generator: torch.Generator, dtype=torch.float32, device=None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit values (Theis et al. 2016): x = (v + u) / 128 - 1 in [-1, 1), u ~ U[0,
    1)^D."""
    u = torch.rand(v.shape, generator=generator, dtype=torch.float64)
    return ((v.to(torch.float64) + u) / DEQUANT_SCALE - 1).to(device=device, dtype=dtype)


def image_nll(log_prob_x: torch.Tensor, dim: int) -> torch.Tensor:
    """-log p of v + u in [0, 256) units from log p of x = (v + u)/128 - 1: the Jacobian adds D ln 128
    nats."""
    return -log_prob_x + dim * math.log(DEQUANT_SCALE)


def bits_per_dim(nll: torch.Tensor, dim: int) -> torch.Tensor:
    """Nats per item -> bits per dimension."""
    return nll / (dim * math.log(2))


def combine_draws(log_probs: torch.Tensor, stderrs: torch.Tensor, average: str = "logmeanexp"):
    """Combine M dequantisation draws (M, B) into one estimate per item, with a delta-method standard error.

    logmeanexp: log (1/M) sum_m p(v + u_m), the importance-weighted bound (tighter as M grows, Burda et al.
    2016); mean: (1/M) sum_m log p(v + u_m), the variational-dequantisation bound (Ho et al. 2019, Eq. 4).
    """
    m = log_probs.shape[0]
    if average == "mean":
        return log_probs.mean(0), stderrs.pow(2).sum(0).sqrt() / m
    if average == "logmeanexp":
        w = torch.softmax(log_probs, 0)
        return torch.logsumexp(log_probs, 0) - math.log(m), (w.pow(2) * stderrs.pow(2)).sum(0).sqrt()
    raise ValueError(f"unknown draw average {average!r}; choose one of {', '.join(DRAW_AVERAGES)}")


def mean_ci95(values: torch.Tensor) -> tuple[float, float | None, float | None]:
    """Mean and a normal 95% confidence interval from the per-item spread: mean +- 1.96 s / sqrt(n)."""
    v = values.double()
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None
    half = 1.959963984540054 * float(v.std()) / math.sqrt(len(v))
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------------------------------
# A data set in batches


@dataclass
class Evaluation:
    """Per-item results of `evaluate`: NLL in nats (in [0, 256) units for images), its stderr, and
    bits/dim."""

    nll: torch.Tensor  # (N,) nats per item
    stderr: torch.Tensor  # (N,) Monte-Carlo standard error of nll (0 exact; NaN unknown)
    dim: int  # D, dimensions per item
    is_image: bool
    names: list[str] = field(default_factory=list)
    nfe: int = 0  # denoiser evaluations over all batches and draws
    seconds: float = 0.0

    @property
    def bpd(self) -> torch.Tensor:
        return bits_per_dim(self.nll, self.dim)

    def summary(self) -> dict:
        """Means with 95% confidence intervals, per item and per dimension."""
        nll, nll_lo, nll_hi = mean_ci95(self.nll)
        bpd, bpd_lo, bpd_hi = mean_ci95(self.bpd)
        se = self.stderr[~self.stderr.isnan()]
        n = len(self.nll)
        return {
            "bits_per_dim": bpd, "nll_nats": nll, "nll_per_dim": nll / self.dim, "n": n, "dim": self.dim,
            "ci95": {"bits_per_dim": [bpd_lo, bpd_hi], "nll_nats": [nll_lo, nll_hi]},
            "mean_item_stderr_nats": float(se.mean()) if len(se) else None,
            "seconds_per_item": self.seconds / max(n, 1), "nfe": self.nfe,
        }


def evaluate(estimator: Estimator, ds: Dataset, *, n: int | None = None, batch: int = 64,
             dequant_draws: int = 1, draw_average: str = "logmeanexp", seed: int = 0, device=None,
             dtype=torch.float32, progress: Callable[[int], None] | None = None) -> Evaluation:
    """NLL of the first n items of `ds`, batch by batch; images dequantised `dequant_draws` times (see module
    doc).

    The dequantisation noise and the estimator's noise come from two generators seeded from `seed`, so the
    same seed gives the same dequantised points whatever the estimator.
    """
    total = len(ds) if n is None else min(n, len(ds))
    if total < 1:
        raise ValueError(f"{ds.name} holds no items to evaluate")
    if batch < 1 or dequant_draws < 1:
        raise ValueError("batch and dequant_draws must be at least 1")
    seeds = np.random.SeedSequence(seed).generate_state(2)
    gen_deq = torch.Generator().manual_seed(int(seeds[0]))
    gen_est = torch.Generator().manual_seed(int(seeds[1]))
    dim = int(np.prod(ds.shape))
    nlls, errs, nfe = [], [], 0
    t0 = time.perf_counter()
    for start in range(0, total, batch):
        idx = torch.arange(start, min(start + batch, total))
        labels = None if ds.labels is None else ds.labels[idx].to(device)
        if ds.is_image:
            lps, ses = [], []
            for _ in range(dequant_draws):
                est = estimator(dequantize(ds.values[idx], gen_deq, dtype, device), labels, gen_est)
                lps.append(est.log_prob.double().cpu())
                ses.append(est.stderr.double().cpu())
                nfe += est.nfe
            lp, se = combine_draws(torch.stack(lps), torch.stack(ses), draw_average)
            nlls.append(image_nll(lp, dim))
        else:
            est = estimator(ds.values[idx].to(device=device, dtype=dtype), labels, gen_est)
            nfe += est.nfe
            nlls.append(-est.log_prob.double().cpu())
            se = est.stderr.double().cpu()
        errs.append(se)
        if progress is not None:
            progress(len(idx))
    names = list(ds.items[:total]) if ds.items else [str(i) for i in range(total)]
    return Evaluation(torch.cat(nlls), torch.cat(errs), dim, ds.is_image, names, nfe,
                      time.perf_counter() - t0)
