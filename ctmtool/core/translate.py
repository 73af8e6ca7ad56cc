"""GCTM translation: one jump G(x1, 1, 0) from the source side to the target side (GCTM, Kim et al. 2024b,
Sec. 3), or `nfe` jumps along the model's time grid with gamma-sampling
(`ctmtool.core.sampling.gamma_sample`).

Editing (SDEdit, strokes) works for CTMs and GCTMs alike and lives in `ctmtool.core.editing`.

Latent manipulation (`manipulate`): a GCTM trained with the class-Gaussian `latent` coupling (1202kbs/GCTM
couplings.py 118-130) sends the Gaussian N(mu_c, diag s_c^2) of class c to the class's data. An input x0 of
class a is encoded to its source point x1 by solving the model's own ODE from t = 0 up to t = 1 (`encode`),
x1 is moved into class b's Gaussian (`move_latent`: mu_b + (s_b / s_a)(x1 - mu_a), a shift by mu_b - mu_a
when the stds agree), and decoded by one jump G(x1', 1, 0) (or `nfe` jumps).
"""

from __future__ import annotations

import torch

from ctmtool.core import solvers
from ctmtool.core.editing import Noise, finish
from ctmtool.core.sampling import SamplingPlan, gamma_sample


def translation_schedule(model, nfe: int = 1) -> torch.Tensor:
    """Times for `nfe` >= 1 jumps: the GCTM training grid with nfe + 1 points (preset.diffusion sigmas), 1 ->
    0."""
    return model.net.default_schedule(nfe)


@torch.no_grad()
def translate(model, x1: torch.Tensor, plan: SamplingPlan, noise: Noise | None = None,
              labels=None) -> torch.Tensor:
    """GCTM translation x1 -> x0 along `plan.schedule` (`ctmtool.jobs.plan.plan_translation`): G(x1 + eps, 1,
    0) in one step (GCTM Sec. 3; Alg. 2 with N = 1), or nfe jumps with gamma-sampling at `plan.gamma`.

    eps = preset.gctm.source_noise * noise() when the model was trained with source noise and `noise` is
    given (the reference's X1_eps_std at inference); without `noise` the source is used as is. The plan is
    trusted: `plan_translation` has refused models that do not translate and gamma > 0 for non-Gaussian
    sources.
    """
    if tuple(x1.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"inputs of shape {tuple(x1.shape[1:])} do not match the model's "
                         f"{tuple(model.data_shape)}")
    x = x1.float()
    source_noise = model.preset.gctm.source_noise
    if source_noise > 0 and noise is not None:
        x = x + source_noise * noise()
    return finish(model, gamma_sample(model.net, x, plan.schedule, noise, labels, plan.gamma))


def encode_schedule(model, steps: int) -> torch.Tensor:
    """Levels of `steps` ODE steps from the smallest positive level of the model's grid up to its start
    (t_min ~ 0.002 -> 1 for a GCTM): the grid of `steps` + 1 jumps, reversed, without its final 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    grid = model.net.default_schedule(steps + 1)
    return grid[grid > 0].flip(0)


@torch.no_grad()
def encode(model, x0: torch.Tensor, steps: int = 18, labels=None) -> torch.Tensor:
    """The source point of x0: the model's ODE dx/dt = (x - g(x, t, t)) / t solved from the data end t = 0 up
    to the source end t = 1 (the trained jump G only goes down, s <= t): an Euler step from 0 to the grid's
    first level t_1 with the velocity at (x0, t_1) (at t = 0 it is 0/0), then `steps` Heun steps along
    `encode_schedule`; 2 `steps` + 1 network evaluations."""
    if tuple(x0.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"inputs of shape {tuple(x0.shape[1:])} do not match the model's "
                         f"{tuple(model.data_shape)}")
    sched, x = encode_schedule(model, steps), x0.float()
    t1 = sched[:1].to(device=x.device, dtype=torch.float32).expand(x.shape[0])
    x = 2 * x - model.net.denoise(x, t1, labels).float()  # x + t_1 (x - g(x, t_1, t_1)) / t_1
    return solvers.heun(model.net, x, sched, labels)


@torch.no_grad()
def manipulate(model, x0: torch.Tensor, from_labels: torch.Tensor, to_labels: torch.Tensor,
               plan: SamplingPlan, encode_steps: int = 18) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latent manipulation (module docstring): (x1 = encode(x0), x1 moved from class a to class b, the
    decoded image of the moved latent along `plan` (`plan_translation`)). `model.net.move_latent` raises
    ValueError for a model whose source has no classes."""
    x1 = encode(model, x0, encode_steps)
    moved = model.net.move_latent(x1, from_labels, to_labels)
    return x1, moved, translate(model, moved, plan)
