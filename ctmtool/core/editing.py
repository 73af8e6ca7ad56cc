"""Editing with trajectory models: SDEdit and stroke-guided editing, one code path for CTM and GCTM.

- `sdedit`: take an image to level t0 with the model's own forward process (`perturb`), then jump back to
  the data (SDEdit, Meng et al. 2022, with one CTM/GCTM jump instead of an SDE solve; GCTM Sec. 5.4). For a
  CTM the level is a noise level sigma (x + sigma n); for a GCTM with a Gaussian source it is the
  interpolation time t ((1 - t) x + t n). `strength_level` maps one strength in (0, 1] to either:
  sigma = t / (1 - t) gives x / (1 - t) = x + sigma n, the same signal-to-noise ratio.
- `stroke_edit`: SDEdit's stroke-based editing: paint strokes over the image, then `sdedit` the composite.

Every function takes a `ctmtool.core.models.Model` and float tensors in the data range (images in [-1, 1]);
randomness comes from a `noise()` callable (e.g. `ctmtool.core.sampling.ImageNoise`, one stream per item) or a
torch.Generator, never from global state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ctmtool.core.sampling import SamplingPlan, gamma_sample

Noise = Callable[[], torch.Tensor]


def noise_source(noise: Noise | None, generator: torch.Generator | None, like: torch.Tensor) -> Noise:
    """`noise` itself, else draws shaped like `like` from `generator` (on the generator's device)."""
    if noise is not None:
        return noise
    where = generator.device if generator is not None else like.device

    def draw() -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=where).to(like.device, like.dtype)

    return draw


def finish(model, x: torch.Tensor) -> torch.Tensor:
    """Images clamped to [-1, 1]; vectors as they are."""
    return x.clamp(-1, 1) if model.is_image else x


def strength_to_level(model, strength: float) -> float:
    """An editing strength in (0, 1] as the model's own level (`TrajectoryModel.strength_level`)."""
    return model.net.strength_level(strength)


def edit_schedule(model, level: float, nfe: int = 1) -> torch.Tensor:
    """Levels for `nfe` >= 1 jumps from `level` down to the end of the trajectory."""
    return model.net.edit_schedule(level, nfe)


@torch.no_grad()
def sdedit(model, x: torch.Tensor, t0: float, plan: SamplingPlan, noise: Noise | None = None,
           generator: torch.Generator | None = None, labels=None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) with trajectory jumps: perturb x to level t0, then jump back to the data
    along `plan.schedule` (from t0; `ctmtool.jobs.plan.plan_editing` settles both and checks the model can
    edit).

    t0 is the model's own level (see the module docstring). Larger t0: more freedom, less faithfulness.
    """
    if tuple(x.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not match the model's "
                         f"{tuple(model.data_shape)}")
    x = x.float()
    draw = noise_source(noise, generator, x)
    x_t = model.net.perturb(x, t0, draw())
    return finish(model, gamma_sample(model.net, x_t, plan.schedule, draw, labels, gamma=plan.gamma))


def stroke_mask(image: torch.Tensor, strokes: torch.Tensor, tol: float = 4 / 127.5) -> torch.Tensor:
    """(B, 1, H, W) mask of the pixels where `strokes` differs from `image` by more than `tol` in some
    channel."""
    return ((strokes - image).abs().amax(dim=1, keepdim=True) > tol).to(image.dtype)


def composite(image: torch.Tensor, strokes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The stroke painting: strokes where mask = 1, the image elsewhere (SDEdit's stroke input)."""
    m = stroke_mask(image, strokes) if mask is None else mask.to(image)
    return m * strokes + (1 - m) * image


@torch.no_grad()
def stroke_edit(model, image: torch.Tensor, strokes_image: torch.Tensor, mask: torch.Tensor | None, t0: float,
                plan: SamplingPlan, noise: Noise | None = None, generator: torch.Generator | None = None,
                labels=None, keep_unmasked: bool = False) -> torch.Tensor:
    """Stroke-guided editing (SDEdit, Meng et al. 2022, Sec. 4.1): `sdedit` of the composite image.

    mask (B or 1, 1, H, W) in [0, 1] marks where the strokes apply (None: wherever they differ from the
    image); keep_unmasked=True pastes the original back outside the mask (SDEdit's image compositing).
    """
    if image.ndim != 4:
        raise ValueError("stroke editing is for images")
    m = stroke_mask(image, strokes_image) if mask is None else mask.to(image)
    out = sdedit(model, composite(image, strokes_image, m), t0, plan, noise, generator, labels)
    return m * out + (1 - m) * image if keep_unmasked else out
