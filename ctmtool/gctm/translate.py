"""Using trained trajectory models on a user's data: GCTM translation, SDEdit and stroke-guided editing.

- `translate`: one jump G(x1, 1, 0) from the source side to the target side (GCTM, Kim et al. 2024b, Sec. 3),
  or `nfe` jumps along the time grid with gamma-sampling.
- `sdedit`: noise an image to level t0 and jump back to the data (SDEdit, Meng et al. 2022, with one
  CTM/GCTM jump instead of an SDE solve; GCTM Sec. 5.4 "image editing"). For a CTM the level is a noise
  level sigma (x + sigma n); for a GCTM with a Gaussian source it is the interpolation time t
  (x_t = (1 - t) x + t n). `strength_to_level` maps one strength in (0, 1] to either: sigma = t / (1 - t)
  gives x / (1 - t) = x + sigma n, the same signal-to-noise ratio.
- `stroke_edit`: SDEdit's stroke-based editing: paint strokes over the image, then `sdedit` the composite.
- `side_by_side`: a before/after picture (image rows, or scatter panels for 2-D points).

Every function takes a `ctmtool.models.Model` and float tensors in the data range (images in [-1, 1]);
randomness comes from a `noise()` callable (e.g. `ctmtool.sampling.ImageNoise`, one stream per item) or a
torch.Generator, never from global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ctmtool.data.base import to_uint8_images
from ctmtool.errors import UserError
from ctmtool.gctm.objective import gctm_grid
from ctmtool.sampling import gamma_sample
from ctmtool.schedules import karras_sigmas
from ctmtool.visual import make_grid, scatter_image

Noise = Callable[[], torch.Tensor]
GAUSSIAN_SOURCES = ("independent", "ot")  # couplings whose source x1 is N(0, I) noise


def coupling_kind(model) -> str:
    """The kind of a GCTM's coupling spec (independent, ot, paired, corrupt, toy, toy-ot); '' for other models."""
    g = getattr(model.preset, "gctm", None)
    return g.coupling.strip().partition(":")[0] if (model.kind == "gctm" and g is not None) else ""


def has_gaussian_source(model) -> bool:
    """True for a GCTM whose source side is Gaussian noise (independent or OT coupling): it can generate and edit."""
    return coupling_kind(model) in GAUSSIAN_SOURCES


def _noise_source(noise: Noise | None, generator: torch.Generator | None, like: torch.Tensor) -> Noise:
    if noise is not None:
        return noise
    where = generator.device if generator is not None else like.device

    def draw() -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=where).to(like.device, like.dtype)

    return draw


def _finish(model, x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-1, 1) if model.is_image else x


def translation_schedule(model, nfe: int = 1) -> torch.Tensor:
    """Times for `nfe` jumps: the GCTM training grid with nfe + 1 points (preset.diffusion sigmas), 1 -> 0."""
    if nfe < 1:
        raise UserError(f"--nfe must be at least 1, got {nfe}")
    d = model.preset.diffusion
    return gctm_grid(nfe + 1, d.sigma_min, d.sigma_max, d.rho)


@torch.no_grad()
def gctm_gamma_sample(net, x: torch.Tensor, times, noise: Noise | None = None, labels=None,
                      gamma: float = 0.0) -> torch.Tensor:
    """CTM gamma-sampling (Kim et al. 2024, Alg. 1) in GCTM time: jump t_i -> s = sqrt(1-gamma^2) t_{i+1}, then
    re-noise s -> t_{i+1} along x_t = (1-t) x0 + t n: x <- a x + sqrt(t_{i+1}^2 - (a s)^2) z, a = (1-t_{i+1})/(1-s)."""
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"gamma must be in [0, 1], got {gamma}")
    ts = [float(t) for t in times]
    last, n = ts[-1], len(ts) - 1
    for i in range(n):
        s = math.sqrt(1 - gamma**2) * (ts[i + 1] - last) + last
        x = net.jump(x, ts[i], s, labels)
        if i < n - 1 and gamma > 0:
            if noise is None:
                raise ValueError("gamma > 0 with more than one step needs a noise source")
            a = (1 - ts[i + 1]) / (1 - s)
            x = a * x + math.sqrt(max(ts[i + 1] ** 2 - (a * s) ** 2, 0.0)) * noise()
    return x


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
    if gamma > 0 and nfe > 1 and not has_gaussian_source(model):
        raise UserError(f"--gamma > 0 re-noises with Gaussian noise, which only fits a Gaussian source; this GCTM's "
                        f"coupling is {model.preset.gctm.coupling!r}: use --gamma 0")
    if tuple(x1.shape[1:]) != tuple(model.data_shape):
        raise UserError(f"inputs of shape {tuple(x1.shape[1:])} do not match the model's {tuple(model.data_shape)}")
    x = x1.float()
    source_noise = model.preset.gctm.source_noise
    if source_noise > 0 and noise is not None:
        x = x + source_noise * noise()
    out = gctm_gamma_sample(model.net, x, translation_schedule(model, nfe), noise, labels, gamma)
    return _finish(model, out)


def strength_to_level(model, strength: float) -> float:
    """An editing strength in (0, 1] as the model's own level: t for a GCTM, sigma = t / (1 - t) (capped at
    sigma_max, reached at strength 1) for a CTM, the noise level with the same signal-to-noise ratio."""
    if not 0.0 < strength <= 1.0:
        raise UserError(f"--strength must be in (0, 1], got {strength}")
    if model.kind == "gctm":
        return float(strength)
    sigma = model.sigma_max if strength >= 1 else strength / (1 - strength)
    return float(min(max(sigma, model.sigma_min * 1.0001), model.sigma_max))


def edit_schedule(model, level: float, nfe: int = 1) -> torch.Tensor:
    """Levels for `nfe` jumps from `level` down to the end of the trajectory (Karras spacing below level)."""
    if nfe < 1:
        raise UserError(f"--nfe must be at least 1, got {nfe}")
    d = model.preset.diffusion
    if model.kind == "gctm":
        if level >= 1.0:
            return translation_schedule(model, nfe)
        top = level / (1 - level)
        sig = karras_sigmas(nfe + 1, min(d.sigma_min, top / 2), top, d.rho)
        t = sig / (1 + sig)
        t[0], t[-1] = level, 0.0
        return t
    smin = model.sigma_min
    if nfe == 1:
        return torch.tensor([level, smin], dtype=torch.float64)
    return karras_sigmas(nfe + 1, smin, level, d.rho)


def _check_editable(model, level: float) -> None:
    if model.kind == "ctm":
        if not model.sigma_min < level <= model.sigma_max:
            raise UserError(f"noise level {level:g} is outside this CTM's range ({model.sigma_min:g}, {model.sigma_max:g}]")
        return
    if model.kind != "gctm":
        raise UserError(f"{model.path or 'this model'} is a {model.kind} checkpoint; editing needs a CTM or a GCTM "
                        "(a teacher can be distilled into a CTM with `ctmtool distill`)")
    if not has_gaussian_source(model):
        raise UserError(f"this GCTM maps {model.preset.gctm.coupling!r} sources to data, not noise to data, so "
                        "SDEdit cannot re-noise an image for it; use a CTM or a GCTM trained with coupling "
                        "'independent' or 'ot'")
    if not 0.0 < level <= 1.0:
        raise UserError(f"GCTM time {level:g} is outside (0, 1]")


@torch.no_grad()
def sdedit(model, x: torch.Tensor, t0: float, noise: Noise | None = None, generator: torch.Generator | None = None,
           labels=None, nfe: int = 1, gamma: float = 0.0) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) with trajectory jumps: perturb x to level t0, then jump back to the data.

    t0 is the model's own level: sigma for a CTM (x + t0 n), interpolation time for a GCTM with a Gaussian
    source ((1 - t0) x + t0 n, n scaled by the source's std). Larger t0: more freedom, less faithfulness.
    """
    _check_editable(model, t0)
    if tuple(x.shape[1:]) != tuple(model.data_shape):
        raise UserError(f"images of shape {tuple(x.shape[1:])} do not match the model's {tuple(model.data_shape)}")
    x = x.float()
    draw = _noise_source(noise, generator, x)
    sched = edit_schedule(model, t0, nfe)
    if model.kind == "gctm":
        std = math.sqrt(1.0 + model.preset.gctm.source_noise ** 2)
        x_t = (1 - t0) * x + t0 * std * draw()
        out = gctm_gamma_sample(model.net, x_t, sched, draw, labels, gamma)
    else:
        out = gamma_sample(model.net, x + t0 * draw(), sched, draw, labels, gamma=gamma)
    return _finish(model, out)


def stroke_mask(image: torch.Tensor, strokes: torch.Tensor, tol: float = 4 / 127.5) -> torch.Tensor:
    """(B, 1, H, W) mask of the pixels where `strokes` differs from `image` by more than `tol` in some channel."""
    return ((strokes - image).abs().amax(dim=1, keepdim=True) > tol).to(image.dtype)


def composite(image: torch.Tensor, strokes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The stroke painting: strokes where mask = 1, the image elsewhere (SDEdit's stroke input)."""
    m = stroke_mask(image, strokes) if mask is None else mask.to(image)
    return m * strokes + (1 - m) * image


@torch.no_grad()
def stroke_edit(model, image: torch.Tensor, strokes_image: torch.Tensor, mask: torch.Tensor | None, t0: float,
                noise: Noise | None = None, generator: torch.Generator | None = None, labels=None, nfe: int = 1,
                gamma: float = 0.0, keep_unmasked: bool = False) -> torch.Tensor:
    """Stroke-guided editing (SDEdit, Meng et al. 2022, Sec. 4.1): `sdedit` of the composite image.

    mask (B or 1, 1, H, W) in [0, 1] marks where the strokes apply (None: wherever they differ from the
    image); keep_unmasked=True pastes the original back outside the mask (SDEdit's image compositing).
    """
    if image.ndim != 4:
        raise UserError("stroke editing is for images")
    m = stroke_mask(image, strokes_image) if mask is None else mask.to(image)
    out = sdedit(model, composite(image, strokes_image, m), t0, noise, generator, labels, nfe, gamma)
    return m * out + (1 - m) * image if keep_unmasked else out


def side_by_side(columns: list[torch.Tensor], is_image: bool, reference: torch.Tensor | None = None,
                 per_row: int | None = None) -> np.ndarray:
    """One picture of items next to their translations: images as [col 1 | col 2 | ...] per item, in rows of
    `per_row` items; 2-D points as one scatter panel per column on a common scale (reference in grey)."""
    if is_image:
        n, k = columns[0].shape[0], len(columns)
        per_row = per_row or max(1, round((n / k) ** 0.5))
        stack = torch.stack([to_uint8_images(c.cpu()) for c in columns], 1).flatten(0, 1)  # item-major
        return make_grid(stack, nrow=per_row * k)
    pts = torch.cat([c.detach().float().cpu() for c in columns])
    lim = float(max(1.0, pts.abs().quantile(0.995).item() * 1.1))
    panels = [scatter_image(c, size=384, extent=lim, reference=reference if i == len(columns) - 1 else None)
              for i, c in enumerate(columns)]
    return np.concatenate(panels, axis=1)
