"""Sampling: CTM gamma-sampling, teacher ODE sampling, per-image noise streams and batched generation.

Every sampler has the signature `sampler(net, x, sigmas, noise, labels=None, **options) -> x` (net: a
preconditioned network),
where `noise()` returns the next standard-normal draw shaped like x (see `ImageNoise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ctmtool.core import distributed as ddp
from ctmtool.core import solvers
from ctmtool.core.noise import GeneratorNoise, ImageNoise, make_noise  # noqa: F401  (ImageNoise: the EDM-equal stream)
from ctmtool.core.schedules import karras_sigmas


@torch.no_grad()
def gamma_sample(net, x: torch.Tensor, sigmas, noise: Callable[[], torch.Tensor] | None = None,
                 labels=None, gamma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Kim et al. 2024, Alg. 1 (gamma-sampling) for any trajectory network: jump sigma_i -> s with
    s = sqrt(1-gamma^2)(sigma_{i+1} - sigma_last) + sigma_last, then `net.renoise` s -> sigma_{i+1}.

    `net`: a preconditioned network, or a loaded `Model` (anything with `jump` and `renoise`); `x` starts at
    sigmas[0] (k-diffusion style: `x = torch.randn(...) * sigmas[0]`). The re-noising draws come from `noise`,
    else from `generator` (a torch.Generator on x's device), else from torch's global generator."""
    if noise is None and gamma > 0:
        noise = lambda: torch.randn(x.shape, generator=generator, device=x.device,  # noqa: E731
                                    dtype=x.dtype)
    if not 0.0 <= gamma <= 1.0:  # a programming error: user settings are checked by ctmtool.jobs.plan
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    sig = [float(s) for s in sigmas]
    last, n = sig[-1], len(sig) - 1
    for i in range(n):
        s = math.sqrt(1 - gamma**2) * (sig[i + 1] - last) + last
        x = net.jump(x, sig[i], s, labels)
        if i < n - 1 and gamma > 0:
            x = net.renoise(x, s, sig[i + 1], noise())
    return x


def teacher_sample(net, x: torch.Tensor, sigmas, noise=None, labels=None,
                   solver: str = "heun") -> torch.Tensor:
    """Deterministic PF-ODE sampling of a denoiser (Karras et al. 2022, Alg. 1) through `solvers`."""
    return solvers.SOLVERS[solver](net, x, torch.as_tensor(sigmas, dtype=torch.float64), labels)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """How every sample of one request is drawn, settled once: `ctmtool.jobs.plan.plan_sampling` builds it
    from user settings and the preset's [sample] and checks it; the sampler below trusts it."""

    solver: str  # "gamma" (gamma-sampling a trajectory model) | "heun" | "euler" (a denoiser's PF-ODE)
    schedule: torch.Tensor  # the levels visited, the start level first (float64)
    gamma: float = 0.0  # 0 deterministic jumps ... 1 re-noise fully between jumps (0 for heun/euler)
    noise: str = "edm"  # the per-image noise stream (`ctmtool.core.noise.make_noise`)
    class_label: int | None = None  # a conditional model's class; None: a random class per image
    batch: int = 256  # items per forward pass
    sigmas: tuple[float, ...] | None = None  # the levels as given explicitly (user or preset), else None

    @property
    def nfe(self) -> int:
        """Network evaluations of one sample."""
        steps = len(self.schedule) - 1
        return (steps if self.solver == "gamma"
                else solvers.solver_nfe(self.solver, steps, float(self.schedule[-1]) == 0.0))


def default_schedule(model, nfe: int) -> torch.Tensor:
    """The trajectory model's own schedule for `nfe` >= 1 jumps (`TrajectoryModel.default_schedule`)."""
    return model.net.default_schedule(nfe)


def teacher_schedule(model, steps: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's sampling grid: `steps` >= 1 Karras levels from sigma_max to sigma_min, then 0."""
    net = model.net
    if steps == 1:
        return torch.tensor([net.sigma_max, 0.0], dtype=torch.float64)
    return torch.cat([karras_sigmas(steps, net.sigma_min, net.sigma_max, rho),
                      torch.zeros(1, dtype=torch.float64)])


def sample_from(model, z: torch.Tensor, plan: SamplingPlan, noise: Callable[[], torch.Tensor] | None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """Samples from the standard-normal draw z with `plan`: the start level from the model's own forward
    process, then gamma-sampling (`noise()` re-noises between jumps) or the teacher's ODE; images clamped to
    [-1, 1]."""
    net, sched = model.net, plan.schedule
    start = float(sched[0])
    if plan.solver == "gamma":
        x = gamma_sample(net, net.perturb(torch.zeros_like(z), start, z), sched, noise, labels,
                         gamma=plan.gamma)
    else:
        x = teacher_sample(net, start * z, sched, labels=labels, solver=plan.solver)
    return x.clamp(-1, 1) if model.is_image else x


@torch.no_grad()
def generate(model, n: int, plan: SamplingPlan, seed: int = 0, device: torch.device | str = "cpu",
             progress: Callable[[int], None] | None = None,
             program: Callable | None = None,
             generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (x, labels) batches of `n` samples drawn with `plan`; image i uses seed `seed + i` whatever the
    batching.

    x is float in the data range (images in [-1, 1], clamped); labels are None for unconditional models,
    else the plan's class or a per-image random class. The plan's `noise` picks the per-image stream
    (`ctmtool.core.noise`): "edm" (latents equal to EDM's generate.py) or "philox" (drawn on the device).
    `program(z, labels) -> x`: the same solve traced for full batches
    (`ctmtool.core.fastpath.sampling_program`); a last, smaller batch runs eagerly. A `generator`
    (torch.Generator) replaces the per-image seeds: every draw comes from it, in batch order.
    """
    for lo in range(0, n, plan.batch):
        seeds = list(range(seed + lo, seed + min(n, lo + plan.batch)))
        draws = (make_noise(plan.noise, seeds, model.data_shape, device) if generator is None
                 else GeneratorNoise(generator, len(seeds), model.data_shape, device))
        z = draws()
        labels = None
        if model.label_dim:
            labels = (torch.full((len(seeds),), plan.class_label, device=device)
                      if plan.class_label is not None
                      else draws.integers(model.label_dim))
        x = program(z, labels) if program is not None and len(seeds) == plan.batch else \
            sample_from(model, z, plan, draws, labels)
        if progress is not None:
            progress(len(seeds))
        yield x, labels


def distributed_generate(model, n: int, plan: SamplingPlan, seed: int = 0,
                         device: torch.device | str = "cpu") -> torch.Tensor | None:
    """`generate` over all torchrun ranks (rank r makes its index range, image i uses seed + i); rank 0 gets
    all n samples, the others None; one process gets all of them."""
    lo, hi = ddp.rows(n)
    parts = [x for x, _ in generate(model, hi - lo, plan, seed=seed + lo, device=device)]
    mine = torch.cat(parts) if parts else torch.empty((0, *model.data_shape), device=device)
    return ddp.gather_rows(mine, n)
