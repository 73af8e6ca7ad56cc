"""Inputs for translation and editing, fitted to a model: images (grey -> RGB, square ones resized), 2-D
points, side-by-side pairs of a paired GCTM split into source and target halves, masks, and the model's own
degradation.

Every function raises `UserError` naming the file and the fix; values come back as float tensors in the
data range (images in [-1, 1]) and are refused when they hold NaN or infinite values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ctmtool.errors import UserError
from ctmtool.jobs.items import check_finite


@dataclass
class Inputs:
    x: torch.Tensor  # items fitted to the model (images in [-1, 1], or points)
    names: list[str] | None  # unique file stems, to name output files (None when not unique)
    other: torch.Tensor | None = None  # the target halves of side-by-side pairs (for a before/after grid)
    labels: torch.Tensor | None = None  # class labels of the items (class sub-folders, an npz's `labels`)
    class_names: list[str] | None = None  # the sub-folder (or npz `class_names`) of each label, when known


def _log(log, msg: str) -> None:
    if log is not None:
        log(msg)


def unique_stems(items: list[str] | None, n: int) -> list[str] | None:
    """File stems of the input items when they are unique (used to name output files), else None."""
    if not items or len(items) != n:
        return None
    stems = [Path(i.rsplit(":", 1)[-1]).stem for i in items]
    return stems if len(set(stems)) == n else None


def fit_images(v: torch.Tensor, model, what: str, log=None) -> torch.Tensor:
    """uint8 NCHW images fitted to the model (grey -> RGB, square images resized), as floats in [-1, 1]."""
    from ctmtool.gctm.couplings import resize_uint8

    c, h, w = model.data_shape
    if v.shape[1] != c:
        if v.shape[1] != 1:
            raise UserError(f"{what} has {v.shape[1]}-channel images but the model works on {c} channel(s)")
        v = v.expand(-1, c, -1, -1)
    if tuple(v.shape[-2:]) != (h, w):
        if v.shape[-1] != v.shape[-2] or h != w:
            raise UserError(f"{what} has {v.shape[-1]}x{v.shape[-2]} images but the model works on {w}x{h}; "
                            "resize them")
        _log(log, f"{what}: resizing {v.shape[-1]}x{v.shape[-2]} images to {w}x{h}")
        v = resize_uint8(v.contiguous(), h)
    return v.float() / 127.5 - 1


def load_inputs(path: str | Path, model, split_pairs: bool = False, log=None) -> Inputs:
    """Items of `path` (folder, .zip, .npz, image file, or an .npz of points) fitted to `model`; side-by-side
    pairs of a paired GCTM are split (with `split_pairs`) into the source half and the target half."""
    from ctmtool.data.images import load_images

    p = Path(path)
    if not p.exists():
        raise UserError(f"input {p} does not exist; give a folder, .zip or .npz of images, an image file, "
                        "or an .npz of points")
    ds = load_images(p)
    if len(ds) == 0:
        raise UserError(f"input {p} holds no items; give at least one image or point")
    names = unique_stems(ds.items, len(ds))
    if not model.is_image:
        if ds.is_image:
            raise UserError(f"the model works on points of shape {tuple(model.data_shape)}; give an .npz "
                            "with float 'samples' of shape (N, D)")
        if ds.shape != tuple(model.data_shape):
            raise UserError(f"{p} holds points of shape {ds.shape} but the model works on "
                            f"{tuple(model.data_shape)}")
        x = check_finite(ds.values.float(), f"the points in {p}", "remove or fix those rows")
        return Inputs(x, names)
    if not ds.is_image:
        raise UserError(f"{p} holds points of shape {ds.shape} but the model works on "
                        f"{tuple(model.data_shape)} images")
    v, other = ds.values, None
    _, h, w = model.data_shape
    if split_pairs and _paired(model) and v.shape[-1] == 2 * v.shape[-2] and h == w:
        from ctmtool.gctm.couplings import split_side_by_side

        left, right = split_side_by_side(v)
        source_left = model.preset.gctm.coupling.strip().partition(":")[2] in ("", "left")
        v, other = (left, right) if source_left else (right, left)
        _log(log,
             f"{p}: side-by-side pairs; translating the {'left' if source_left else 'right'} (source) halves")
        other = fit_images(other, model, str(p), log)
    return Inputs(fit_images(v, model, str(p), log), names, other, ds.labels, ds.class_names)


def _paired(model) -> bool:
    from ctmtool.gctm.couplings import coupling_kind

    return model.preset.gctm is not None and coupling_kind(model.preset.gctm.coupling) == "paired"


def load_mask(path: str | Path, model, n: int, log=None) -> torch.Tensor:
    """A mask image as (n, 1, H, W) floats in [0, 1] (white = edit), fitted to the model's size."""
    from ctmtool.data.images import load_images

    p = Path(path)
    if not p.exists():
        raise UserError(f"`mask` {p} does not exist")
    ds = load_images(p)
    if not ds.is_image:
        raise UserError(f"`mask` {p} is not an image")
    if len(ds) not in (1, n):
        raise UserError(f"`mask` {p} has {len(ds)} images; give one, or one per input ({n})")
    v = ds.values.float().mean(1, keepdim=True).round().to(ds.values.dtype)
    m = (fit_images(v.expand(-1, model.data_shape[0], -1, -1), model, f"mask {p}", log)[:, :1] + 1) / 2
    return m.expand(n, -1, -1, -1) if len(m) == 1 else m


def load_strokes(path: str | Path, model, n: int, log=None) -> torch.Tensor:
    """Painted-stroke images, one or one per input, fitted to the model and expanded to `n`."""
    if not model.is_image:
        raise UserError("`strokes` is for image models")
    s = load_inputs(path, model, log=log).x
    if len(s) not in (1, n):
        raise UserError(f"`strokes` {path} has {len(s)} images; give one, or one per input ({n})")
    return s.expand(n, *s.shape[1:]) if len(s) == 1 else s


def degrade(x: torch.Tensor, model, seed: int) -> torch.Tensor:
    """The checkpoint's own degradation (coupling corrupt:<op>) of clean inputs; item i uses seed + i."""
    from ctmtool.gctm.couplings import coupling_kind
    from ctmtool.gctm.degrade import make_degradation

    g = model.preset.gctm  # the coupling a GCTM was trained with ([gctm] section of its preset)
    if g is None or coupling_kind(g.coupling) != "corrupt":
        coupling = g.coupling if g is not None else model.kind
        raise UserError("`degrade` applies the model's degradation, but this model's coupling is "
                        f"{coupling!r}, not corrupt:<op>; drop `degrade`")
    deg = make_degradation(model.preset.gctm.coupling.strip().partition(":")[2])
    return torch.cat([deg(x[i:i + 1], generator=torch.Generator().manual_seed(seed + i))
                      for i in range(len(x))])
