"""Sampling: CTM gamma-sampling, teacher ODE sampling, per-image noise streams and batched generation.

Every sampler has the signature `sampler(model, x, sigmas, noise, labels=None, **options) -> x`,
where `noise()` returns the next standard-normal draw shaped like x (see `ImageNoise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ctmtool import solvers
from ctmtool.errors import UserError
from ctmtool.noise import GeneratorNoise, ImageNoise, make_noise  # noqa: F401  (ImageNoise: the EDM-equal stream)
from ctmtool.schedules import check_schedule, karras_sigmas
from ctmtool.train import distributed as ddp


@torch.no_grad()
def gamma_sample(model, x: torch.Tensor, sigmas, noise: Callable[[], torch.Tensor] | None = None,
                 labels=None, gamma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Kim et al. 2024, Alg. 1 (gamma-sampling) for any trajectory model: jump sigma_i -> s with
    s = sqrt(1-gamma^2)(sigma_{i+1} - sigma_last) + sigma_last, then `model.renoise` s -> sigma_{i+1}.

    `model`: a loaded `Model` or its preconditioned network (anything with `jump` and `renoise`); `x` starts at
    sigmas[0] (k-diffusion style: `x = torch.randn(...) * sigmas[0]`). The re-noising draws come from `noise`,
    else from `generator` (a torch.Generator on x's device), else from torch's global generator."""
    if noise is None and gamma > 0:
        noise = lambda: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # noqa: E731
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    sig = [float(s) for s in sigmas]
    last, n = sig[-1], len(sig) - 1
    for i in range(n):
        s = math.sqrt(1 - gamma**2) * (sig[i + 1] - last) + last
        x = model.jump(x, sig[i], s, labels)
        if i < n - 1 and gamma > 0:
            x = model.renoise(x, s, sig[i + 1], noise())
    return x


def teacher_sample(model, x: torch.Tensor, sigmas, noise=None, labels=None, solver: str = "heun") -> torch.Tensor:
    """Deterministic PF-ODE sampling of a denoiser (Karras et al. 2022, Alg. 1) through `solvers`."""
    return solvers.SOLVERS[solver](model, x, torch.as_tensor(sigmas, dtype=torch.float64), labels)


def default_schedule(model, nfe: int) -> torch.Tensor:
    """The trajectory model's own schedule for `nfe` jumps (`TrajectoryModel.default_schedule`)."""
    if nfe < 1:
        raise UserError(f"`nfe` must be at least 1, got {nfe}")
    return model.net.default_schedule(nfe)


def teacher_schedule(model, steps: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's sampling grid: `steps` Karras levels from sigma_max to sigma_min, then 0."""
    if steps < 1:
        raise UserError(f"`steps` must be at least 1, got {steps}")
    net = model.net
    if steps == 1:
        return torch.tensor([net.sigma_max, 0.0], dtype=torch.float64)
    return torch.cat([karras_sigmas(steps, net.sigma_min, net.sigma_max, rho), torch.zeros(1, dtype=torch.float64)])


def resolve_schedule(model, solver: str, nfe: int, steps: int, sigmas: list[float] | None) -> torch.Tensor:
    """The levels a sampler will visit: `sigmas` when given, else the model's default for `nfe` / `steps`."""
    check_solver(model, solver)
    if sigmas is not None:
        try:
            s = check_schedule(sigmas)
        except ValueError as err:
            raise UserError(f"`sigmas`: {err}") from None
        return s
    return default_schedule(model, nfe) if solver == "gamma" else teacher_schedule(model, steps)


SOLVERS = ("gamma", "heun", "euler")


def check_solver(model, solver: str) -> None:
    """Refuse a solver the model cannot run, and a trajectory model whose source is not Gaussian noise."""
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}; use gamma, heun or euler")
    if solver == "gamma" and not model.is_trajectory:
        raise UserError(f"{model.path or 'this model'} is a {model.kind} (a denoiser), not a CTM: gamma-sampling needs "
                        "a distilled model; use `solver` heun or euler, or distill one with `ctmtool distill`")
    if solver != "gamma" and not model.net.has_density:
        raise UserError(f"{model.path or 'this model'} is a {model.kind} between two distributions: it has no "
                        "noise-to-data denoiser for an ODE solver; use `solver` gamma")
    if model.is_trajectory and not model.net.gaussian_source:
        raise UserError(f"{model.path or 'this model'} maps a non-Gaussian source to data (coupling "
                        f"{model.preset.gctm.coupling!r}); it cannot generate from noise: translate inputs instead")


@torch.no_grad()
def generate(model, n: int, seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
             solver: str = "gamma", nfe: int = 1, gamma: float = 0.0, steps: int = 18,
             sigmas: list[float] | None = None, class_label: int | None = None,
             progress: Callable[[int], None] | None = None, noise: str = "edm",
             generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (x, labels) batches of `n` samples; image i uses seed `seed + i` whatever the batching.

    x is float in the data range (images in [-1, 1], clamped); labels are None for unconditional models,
    else `class_label` or a per-image random class. `noise` picks the per-image stream (`ctmtool.noise`):
    "edm" (the default: latents equal to EDM's generate.py) or "philox" (drawn on the device). A `generator`
    (torch.Generator) replaces the per-image seeds: every draw comes from it, in batch order.
    """
    check_solver(model, solver)
    sched = resolve_schedule(model, solver, nfe, steps, sigmas)
    net = model.net
    start = float(sched[0])
    for lo in range(0, n, batch):
        seeds = list(range(seed + lo, seed + min(n, lo + batch)))
        draws = (make_noise(noise, seeds, model.data_shape, device) if generator is None
                 else GeneratorNoise(generator, len(seeds), model.data_shape, device))
        z = draws()
        labels = None
        if model.label_dim:
            labels = (torch.full((len(seeds),), class_label, device=device) if class_label is not None
                      else draws.integers(model.label_dim))
        if solver == "gamma":
            x = gamma_sample(net, net.perturb(torch.zeros_like(z), start, z), sched, draws, labels, gamma=gamma)
        else:
            x = teacher_sample(net, start * z, sched, labels=labels, solver=solver)
        if model.is_image:
            x = x.clamp(-1, 1)
        if progress is not None:
            progress(len(seeds))
        yield x, labels


def distributed_generate(model, n: int, seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
                         **options) -> torch.Tensor | None:
    """`generate` over all torchrun ranks (rank r makes its index range, image i uses seed + i); rank 0 gets
    all n samples, the others None; one process gets all of them."""
    lo, hi = ddp.rows(n)
    parts = [x for x, _ in generate(model, hi - lo, seed=seed + lo, batch=batch, device=device, **options)]
    mine = torch.cat(parts) if parts else torch.empty((0, *model.data_shape), device=device)
    return ddp.gather_rows(mine, n)
