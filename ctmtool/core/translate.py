"""GCTM translation: one jump G(x1, 1, 0) from the source side to the target side (GCTM, Kim et al. 2024b,
Sec. 3), or `nfe` jumps along the model's time grid with gamma-sampling (`ctmtool.core.sampling.gamma_sample`).

Editing (SDEdit, strokes) works for CTMs and GCTMs alike and lives in `ctmtool.core.editing`.
"""

from __future__ import annotations

import torch

from ctmtool.core.editing import Noise, finish
from ctmtool.core.sampling import gamma_sample
from ctmtool.errors import UserError


def translation_schedule(model, nfe: int = 1) -> torch.Tensor:
    """Times for `nfe` jumps: the GCTM training grid with nfe + 1 points (preset.diffusion sigmas), 1 -> 0."""
    if nfe < 1:
        raise UserError(f"`nfe` must be at least 1, got {nfe}")
    return model.net.default_schedule(nfe)


@torch.no_grad()
def translate(model, x1: torch.Tensor, nfe: int = 1, gamma: float = 0.0, noise: Noise | None = None,
              labels=None) -> torch.Tensor:
    """GCTM translation x1 -> x0: G(x1 + eps, 1, 0) in one step (GCTM Sec. 3; Alg. 2 with N = 1), or nfe jumps.

    eps = preset.gctm.source_noise * noise() when the model was trained with source noise and `noise` is
    given (the reference's X1_eps_std at inference); without `noise` the source is used as is. gamma > 0
    (stochastic multistep) needs a Gaussian source (independent / ot coupling) and `noise`.
    """
    if model.kind != "gctm":
        raise UserError(f"{model.path or 'this model'} is a {model.kind} checkpoint; translation needs a GCTM "
                        "(train one with `ctmtool distill --preset toy-translate` or another GCTM preset)")
    if gamma > 0 and nfe > 1 and not model.net.gaussian_source:
        raise UserError(f"gamma > 0 re-noises with Gaussian noise, which only fits a Gaussian source; this GCTM's "
                        f"coupling is {model.preset.gctm.coupling!r}: use `gamma` 0")
    if tuple(x1.shape[1:]) != tuple(model.data_shape):
        raise UserError(f"inputs of shape {tuple(x1.shape[1:])} do not match the model's {tuple(model.data_shape)}")
    x = x1.float()
    source_noise = model.preset.gctm.source_noise
    if source_noise > 0 and noise is not None:
        x = x + source_noise * noise()
    return finish(model, gamma_sample(model.net, x, translation_schedule(model, nfe), noise, labels, gamma))
