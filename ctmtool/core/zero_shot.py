"""Zero-shot restoration with a trajectory model trained from Gaussian noise: inpainting, colourisation and
super-resolution by iterative jumps (CTM code: sony/ctm code/cm/sample_util.py `iterative_inpainting`,
`iterative_colorization`, `iterative_superres`; GCTM paper, Algorithm 4), for a CTM or a Gaussian-source GCTM.

The known part of each image is a linear projection P of it (the unmasked pixels, the luminance direction,
the patch means); a restoration keeps P y of the reference y and lets the model fill (I - P). From level
L_0 (the start, default the top of the trajectory) with levels L_0 > L_1 > ... > L_{n-1} > end:

    x = perturb(observed, L_0, z)
    for i in 0 .. n-1:
        s  = sqrt(1 - gamma^2) (L_{i+1} - end) + end        (L_n = end)
        x0 = clamp(G(x, L_i, s))                            one jump
        x0 = P perturb(y, s, z') + (I - P) x0               the known part, at the jump's level
        x  = renoise(x0, s, L_{i+1}, z'')   (i < n - 1)

gamma = 1 (the default) jumps to the end each time and re-noises fully: the official colourisation and
super-resolution loops (and consistency models' zero-shot editing); gamma < 1 is the official inpainting
loop's CTM variant. The jump's output is clamped to [-1, 1] before the known part goes back in where the
official loops clamp it (colourisation, and super-resolution at gamma = 1; not inpainting); the result is
clamped at the end. The projections follow the official code: colourisation keeps the coordinate along the
unit vector of (0.2989, 0.5870, 0.1140) over the colour channels, super-resolution the mean of each
`factor` x `factor` patch, inpainting the pixels outside the hole; holes are shown filled black (-1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ctmtool.core.sampling import SamplingPlan

TASKS = ("inpaint", "colorize", "superres")
LUMA_DIRECTION = (0.2989, 0.5870, 0.1140)  # the official colourisation's vector (normalised below)


def _luma_unit(x: torch.Tensor) -> torch.Tensor:
    q = torch.tensor(LUMA_DIRECTION, dtype=x.dtype, device=x.device)
    return (q / q.norm()).reshape(1, 3, 1, 1)


def _patch_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.avg_pool2d(x, factor).repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def project(task: str, x: torch.Tensor, hole: torch.Tensor | None = None, factor: int = 8) -> torch.Tensor:
    """P x: the part of x a restoration keeps (see the module docstring)."""
    if task == "inpaint":
        return x * (1 - hole)
    if task == "colorize":
        q = _luma_unit(x)
        return q * (x * q).sum(1, keepdim=True)
    if task == "superres":
        return _patch_mean(x, factor)
    raise ValueError(f"unknown zero-shot task {task!r}; choose among {', '.join(TASKS)}")


def merge(task: str, y: torch.Tensor, x: torch.Tensor, hole: torch.Tensor | None = None,
          factor: int = 8) -> torch.Tensor:
    """P y + (I - P) x: y's known part, x's rest (inpainting by selection, so the known pixels are exact)."""
    if task == "inpaint":
        return torch.where(hole > 0.5, x, y) if hole.dtype != torch.bool else torch.where(hole, x, y)
    return project(task, y, hole, factor) + x - project(task, x, hole, factor)


def observed(task: str, y: torch.Tensor, hole: torch.Tensor | None = None, factor: int = 8) -> torch.Tensor:
    """What the restoration sees of y: P y, holes black (-1) for inpainting (the official `masked_images`)."""
    p = project(task, y, hole, factor)
    return p - hole if task == "inpaint" else p


def check_task(task: str, shape: tuple[int, ...], factor: int = 8) -> None:
    """What each task needs of the model's data shape: images; RGB to colourise; a super-resolution
    `factor` of 2 or more that divides the image size. A ValueError otherwise: the jobs layer's
    `plan_restoration` checks a user's request with it once."""
    if task not in TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; choose among {', '.join(TASKS)}")
    if len(shape) != 3:
        raise ValueError("zero-shot restoration is for image models")
    c, h, w = shape
    if task == "colorize" and c != 3:
        raise ValueError(f"colourisation needs an RGB model, this one makes {c}-channel images")
    if task == "superres" and (factor < 2 or h % factor or w % factor):
        raise ValueError(f"super-resolution factor {factor} must be at least 2 and divide the image size "
                         f"{h}x{w}")


def centre_hole(shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 1, H, W) hole: the H/2 x W/2 centre box."""
    _, h, w = shape
    m = torch.zeros(1, 1, h, w)
    m[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 1
    return m


@torch.no_grad()
def restore(model, y: torch.Tensor, task: str, plan: SamplingPlan, noise: Callable[[], torch.Tensor],
            hole: torch.Tensor | None = None, factor: int = 8, labels=None) -> torch.Tensor:
    """Zero-shot restoration of reference images y (their known part) by jumps along `plan.schedule` (from its
    first level, which the model can edit from, down to the end of the trajectory) with `plan.gamma`. The plan
    comes from `ctmtool.jobs.plan.plan_restoration`, which checks the task against the model (`check_task`),
    the level and the settings once; this trusts it. `hole`: (1 or B, 1, H, W), 1 = missing (inpainting)."""
    if task == "inpaint" and hole is None:
        raise ValueError("inpainting needs a hole: give `hole` (1 = missing), e.g. `centre_hole(shape)`")
    gamma = plan.gamma
    net = model.net
    y = y.float()
    hole = None if hole is None else hole.to(y)
    levels = [float(v) for v in plan.schedule]
    end = levels[-1]
    known = observed(task, y, hole, factor)

    def keep(x0: torch.Tensor, at: float) -> torch.Tensor:
        return merge(task, net.perturb(y, at, noise()) if at > end else y, x0, hole, factor)

    # as the official loops: colourisation and super-resolution at gamma 1
    clamp = gamma == 1.0 and task != "inpaint"
    x = net.perturb(known, levels[0], noise())
    for i in range(len(levels) - 1):
        s = math.sqrt(1 - gamma**2) * (levels[i + 1] - end) + end
        x0 = net.jump(x, levels[i], s, labels)
        x0 = keep(x0.clamp(-1, 1) if clamp else x0, s)
        x = net.renoise(x0, s, levels[i + 1], noise()) if i < len(levels) - 2 else x0
    return x.clamp(-1, 1)


__all__ = ["TASKS", "centre_hole", "check_task", "merge", "observed", "project", "restore"]
