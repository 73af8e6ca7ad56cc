"""GCTM translation: one jump G(x1, 1, 0) from the source side to the target side (GCTM, Kim et al. 2024b,
Sec. 3), or `nfe` jumps along the model's time grid with gamma-sampling
(`ctmtool.core.sampling.gamma_sample`).

Editing (SDEdit, strokes) works for CTMs and GCTMs alike and lives in `ctmtool.core.editing`.
"""

from __future__ import annotations

import torch

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
