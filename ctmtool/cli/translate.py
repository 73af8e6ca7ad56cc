"""`ctmtool translate`: one-step translation with a GCTM; `ctmtool translate edit`: SDEdit / stroke editing.

One command, two forms (as `ctmtool fid`: a Typer group with a positional argument on its callback
clashes with click's sub-command parsing, so `edit` is recognised as the first argument instead):

    ctmtool translate INPUT --ckpt CKPT --out OUTPUT [--nfe N] [--gamma G] [--degrade] [--grid FILE] ...
    ctmtool translate edit IMAGE --ckpt CKPT --strength S --out OUTPUT [--strokes FILE [--mask FILE]] ...

INPUT / IMAGE: a folder of images, a .zip, an .npz (key `samples`), one image file, or for 2-D models an
.npz of float points (N, D). OUTPUT: a folder (one PNG per item, named after the inputs), an .npz (key
`samples`, plus `inputs`), one .png (a single image, or a scatter plot of 2-D points). To edit an input
literally named `edit`, write `./edit`.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ctmtool.cli.common import (
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    Reporter,
    check_output,
    handle_errors,
    select_device,
)
from ctmtool.errors import UserError

IMAGE_OUT = (".png",)


def _unique_stems(items: list[str] | None, n: int) -> list[str] | None:
    """File stems of the input items when they are unique (used to name output files), else None."""
    if not items or len(items) != n:
        return None
    stems = [Path(i.rsplit(":", 1)[-1]).stem for i in items]
    return stems if len(set(stems)) == n else None


def _check_out(out: str, is_image: bool, force: bool) -> Path:
    """Refuse an output that exists (without --force) or that cannot hold these items, before any work."""
    p = Path(out)
    if p.suffix == ".npz" or p.suffix in IMAGE_OUT:
        return check_output(p, force)
    if p.suffix:
        raise UserError(f"--out {out}: use a folder, an .npz file or a .png file")
    if not is_image:
        raise UserError(f"--out {out}: a folder of PNGs is for images; write 2-D points to .npz (or .png for a scatter plot)")
    if p.exists() and (not p.is_dir() or any(p.iterdir())) and not force:
        raise UserError(f"output folder {p} is not empty; pass --force to write into it or choose another folder")
    return p


def _check_count(out: Path, is_image: bool, n: int) -> None:
    if is_image and out.suffix in IMAGE_OUT and n != 1:
        raise UserError(f"--out {out} is one image but there are {n} items; give a folder or an .npz "
                        "(and --grid FILE.png for a before/after picture)")


def _write(x, inputs, out: Path, is_image: bool, names: list[str] | None) -> dict:
    import numpy as np

    from ctmtool.checkpoint import atomic_write
    from ctmtool.data.base import to_uint8_images
    from ctmtool.visual import save_png, save_png_folder, scatter_image

    if out.suffix == ".npz":
        def arr(v):
            return to_uint8_images(v).permute(0, 2, 3, 1).numpy() if is_image else v.float().numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, samples=arr(x), inputs=arr(inputs))

        atomic_write(out, write)
        return {"out": str(out), "format": "npz"}
    if out.suffix in IMAGE_OUT:
        if not is_image:
            save_png(scatter_image(x), out)
            return {"out": str(out), "format": "png (scatter)"}
        _check_count(out, is_image, len(x))
        save_png(to_uint8_images(x)[0].permute(1, 2, 0).numpy(), out)
        return {"out": str(out), "format": "png"}
    if names is None:
        files = save_png_folder(x, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        files = [save_png(img, out / f"{name}.png")
                 for img, name in zip(to_uint8_images(x).permute(0, 2, 3, 1).numpy(), names, strict=True)]
    return {"out": str(out), "format": "folder", "files": len(files)}


def _as_model_images(v, model, what: str, rep: Reporter):
    """uint8 NCHW images fitted to the model: grey -> RGB, square images resized; float in [-1, 1]."""
    from ctmtool.gctm.couplings import resize_uint8

    c, h, w = model.data_shape
    if v.shape[1] != c:
        if v.shape[1] == 1:
            v = v.expand(-1, c, -1, -1)
        else:
            raise UserError(f"{what} has {v.shape[1]}-channel images but the model works on {c} channel(s)")
    if tuple(v.shape[-2:]) != (h, w):
        if v.shape[-1] != v.shape[-2] or h != w:
            raise UserError(f"{what} has {v.shape[-1]}x{v.shape[-2]} images but the model works on {w}x{h}; resize them")
        rep.log(f"{what}: resizing {v.shape[-1]}x{v.shape[-2]} images to {w}x{h}")
        v = resize_uint8(v.contiguous(), h)
    return v.float() / 127.5 - 1


def _load(path: str, model, rep: Reporter, split_pairs: bool = False):
    """(x, names, other half) from INPUT: images fitted to the model, or 2-D points; side-by-side pairs of a
    paired GCTM are split into the source half (translated) and the target half (shown in --grid)."""
    from ctmtool.data.images import load_images
    from ctmtool.gctm.couplings import coupling_kind

    p = Path(path)
    if not p.exists():
        raise UserError(f"input {p} does not exist; give a folder, .zip or .npz of images, an image file, "
                        "or an .npz of points")
    ds = load_images(p)
    names = _unique_stems(ds.items, len(ds))
    if not model.is_image:
        if ds.is_image:
            raise UserError(f"the model works on points of shape {tuple(model.data_shape)}; give an .npz with float "
                            "'samples' of shape (N, D)")
        if ds.shape != tuple(model.data_shape):
            raise UserError(f"{p} holds points of shape {ds.shape} but the model works on {tuple(model.data_shape)}")
        return ds.values.float(), names, None
    if not ds.is_image:
        raise UserError(f"{p} holds points of shape {ds.shape} but the model translates {tuple(model.data_shape)} images")
    v, other = ds.values, None
    c, h, w = model.data_shape
    kind = coupling_kind(model.preset.gctm.coupling) if model.kind == "gctm" else ""
    if split_pairs and kind == "paired" and v.shape[-1] == 2 * v.shape[-2] and h == w:
        from ctmtool.gctm.couplings import split_side_by_side

        left, right = split_side_by_side(v)
        source_left = model.preset.gctm.coupling.strip().partition(":")[2] in ("", "left")
        v, other = (left, right) if source_left else (right, left)
        rep.log(f"{p}: side-by-side pairs; translating the {'left' if source_left else 'right'} (source) halves")
        other = _as_model_images(other, model, str(p), rep)
    return _as_model_images(v, model, str(p), rep), names, other


def _degrade(x, model, seed: int):
    """The checkpoint's own degradation (coupling corrupt:<op>) of clean inputs; item i uses seed + i."""
    import torch

    from ctmtool.gctm.couplings import coupling_kind
    from ctmtool.gctm.degrade import make_degradation

    if coupling_kind(model.preset.gctm.coupling) != "corrupt":
        raise UserError(f"--degrade applies the model's degradation, but this GCTM's coupling is "
                        f"{model.preset.gctm.coupling!r}, not corrupt:<op>; drop --degrade")
    deg = make_degradation(model.preset.gctm.coupling.strip().partition(":")[2])
    return torch.cat([deg(x[i:i + 1], generator=torch.Generator().manual_seed(seed + i)) for i in range(len(x))])


def _grid(columns, path: Path, model, reference=None, limit: int = 64) -> str:
    from ctmtool.visual import save_png, side_by_side

    cols = [c[:limit] for c in columns] if model.is_image else columns
    save_png(side_by_side(cols, model.is_image, reference=reference), path)
    return str(path)


def _mask(path: str, model, n: int, rep: Reporter):
    """A mask image as (N or 1, 1, H, W) floats in [0, 1] (white = edit), fitted to the model's size."""
    from ctmtool.data.images import load_images

    p = Path(path)
    if not p.exists():
        raise UserError(f"--mask {p} does not exist")
    ds = load_images(p)
    if not ds.is_image:
        raise UserError(f"--mask {p} is not an image")
    if len(ds) not in (1, n):
        raise UserError(f"--mask {p} has {len(ds)} images; give one, or one per input ({n})")
    v = ds.values.float().mean(1, keepdim=True).round().to(ds.values.dtype)
    c = model.data_shape[0]
    m = _as_model_images(v.expand(-1, c, -1, -1), model, f"--mask {p}", rep)[:, :1]
    return (m + 1) / 2


def _batches(n: int, batch: int):
    for lo in range(0, n, batch):
        yield lo, min(n, lo + batch)


def _translate(rep: Reporter, src: str, ckpt: str, out: str, nfe: int, gamma: float, degrade: bool, grid: str | None,
               seed: int, batch: int, ema: str, device: str, force: bool) -> None:
    import torch

    from ctmtool.gctm.translate import translate
    from ctmtool.models import load_model
    from ctmtool.sampling import ImageNoise

    dev = select_device(device)
    model = load_model(ckpt, which=ema, device=dev)
    if model.kind != "gctm":
        raise UserError(f"{ckpt} is a {model.kind} checkpoint; `ctmtool translate` needs a GCTM (train one with "
                        "`ctmtool distill --preset toy-translate` or another GCTM preset); a CTM can edit images "
                        "with `ctmtool translate edit`")
    if gamma > 0 and nfe > 1 and not model.net.gaussian_source:
        raise UserError(f"--gamma > 0 re-noises with Gaussian noise, which only fits a Gaussian source; this GCTM's "
                        f"coupling is {model.preset.gctm.coupling!r}: use --gamma 0")
    out_path = _check_out(out, model.is_image, force)
    grid_path = check_output(grid, force) if grid else None
    x, names, other = _load(src, model, rep, split_pairs=True)
    _check_count(out_path, model.is_image, len(x))
    clean = x
    if degrade:
        x = _degrade(x, model, seed)
    rep.log(f"translating {len(x)} items with {ckpt} ({model.preset.gctm.coupling}, NFE {nfe}) on {dev}")
    t0 = time.time()
    outs = []
    with rep.progress(len(x), "translate", unit="items") as advance:
        for lo, hi in _batches(len(x), batch):
            noise = ImageNoise(list(range(seed + lo, seed + hi)), model.data_shape, dev)
            outs.append(translate(model, x[lo:hi].to(dev), nfe=nfe, gamma=gamma, noise=noise).cpu())
            advance(hi - lo)
    seconds = time.time() - t0
    y = torch.cat(outs)
    info = _write(y, x, out_path, model.is_image, names)
    if grid_path is not None:
        cols = ([clean] if degrade else []) + [x, y] + ([other] if other is not None else [])
        ref = None
        if not model.is_image and model.preset.data.source == "toy":
            from ctmtool.data import toy_points

            d = model.preset.data
            ref = toy_points(d.toy, min(4096, max(len(y), 512)), 1, d.gmm).values
        info["grid"] = _grid(cols, grid_path, model, reference=ref)
    rep.result({**info, "n": len(y), "nfe": nfe, "gamma": gamma, "coupling": model.preset.gctm.coupling,
                "degrade": degrade, "seed": seed, "checkpoint": str(model.path),
                "mean_displacement": round(float((y - x).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="translate")


def _edit(rep: Reporter, image: str, ckpt: str, out: str, strength: float, strokes: str | None, mask: str | None,
          keep_unmasked: bool, nfe: int, gamma: float, grid: str | None, seed: int, batch: int, ema: str,
          device: str, force: bool) -> None:
    import torch

    from ctmtool.editing import check_editable, composite, sdedit, strength_to_level, stroke_edit
    from ctmtool.models import load_model
    from ctmtool.sampling import ImageNoise

    if mask is not None and strokes is None:
        raise UserError("--mask goes with --strokes (it marks where the strokes apply)")
    if keep_unmasked and strokes is None:
        raise UserError("--keep-unmasked goes with --strokes")
    dev = select_device(device)
    model = load_model(ckpt, which=ema, device=dev)
    check_editable(model)
    level = strength_to_level(model, strength)
    check_editable(model, level)
    out_path = _check_out(out, model.is_image, force)
    grid_path = check_output(grid, force) if grid else None
    x, names, _ = _load(image, model, rep)
    _check_count(out_path, model.is_image, len(x))
    painted, m = None, None
    if strokes is not None:
        if not model.is_image:
            raise UserError("--strokes is for image models")
        s, _, _ = _load(strokes, model, rep)
        if len(s) not in (1, len(x)):
            raise UserError(f"--strokes {strokes} has {len(s)} images; give one, or one per input ({len(x)})")
        s = s.expand_as(x) if len(s) == 1 else s
        m = _mask(mask, model, len(x), rep) if mask is not None else None
        if m is not None and len(m) == 1:
            m = m.expand(len(x), -1, -1, -1)
        painted = composite(x, s, m)
    unit = "t" if model.kind == "gctm" else "sigma"
    rep.log(f"editing {len(x)} items with {ckpt} ({model.kind}) at strength {strength} ({unit} = {level:.4g}), NFE {nfe}")
    t0 = time.time()
    outs = []
    with rep.progress(len(x), "edit", unit="items") as advance:
        for lo, hi in _batches(len(x), batch):
            noise = ImageNoise(list(range(seed + lo, seed + hi)), model.data_shape, dev)
            xb = x[lo:hi].to(dev)
            if painted is None:
                y = sdedit(model, xb, level, noise=noise, nfe=nfe, gamma=gamma)
            else:
                mb = None if m is None else m[lo:hi].to(dev)
                y = stroke_edit(model, xb, s[lo:hi].to(dev), mb, level, noise=noise, nfe=nfe, gamma=gamma,
                                keep_unmasked=keep_unmasked)
            outs.append(y.cpu())
            advance(hi - lo)
    seconds = time.time() - t0
    y = torch.cat(outs)
    start = x if painted is None else painted
    info = _write(y, start, out_path, model.is_image, names)
    if grid_path is not None:
        info["grid"] = _grid([x] + ([painted] if painted is not None else []) + [y], grid_path, model)
    rep.result({**info, "n": len(y), "kind": model.kind, "strength": strength, "level": round(level, 6),
                "level_unit": unit, "nfe": nfe, "gamma": gamma, "strokes": strokes, "mask": mask, "seed": seed,
                "checkpoint": str(model.path), "mean_change": round(float((y - start).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="edit")


@handle_errors
def translate_cmd(
    source: str = typer.Argument(..., metavar="INPUT", help="Items to translate: folder, .zip, .npz, image file, "
                                 "or .npz of points; or `edit` followed by IMAGE."),
    image: str | None = typer.Argument(None, metavar="[IMAGE]", help="`translate edit`: the image(s) to edit."),
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint (.safetensors) or run directory (its newest checkpoint)."),
    out: str = typer.Option(..., "--out", "-o", help="A folder (one PNG per item), an .npz (key samples) or one .png."),
    nfe: int = typer.Option(1, "--nfe", min=1, help="Jumps along the time grid (1: one step, G(x1, 1, 0))."),
    gamma: float = typer.Option(0.0, "--gamma", min=0.0, max=1.0, help="0 deterministic jumps ... 1 re-noise fully "
                                "between jumps (Gaussian sources and editing only)."),
    degrade: bool = typer.Option(False, "--degrade", help="Apply the model's own degradation (coupling corrupt:<op>) "
                                 "to clean inputs first, to see before/after."),
    grid: str | None = typer.Option(None, "--grid", help="Also write a side-by-side PNG: input | output "
                                    "(clean | degraded | output with --degrade)."),
    strength: float = typer.Option(0.5, "--strength", help="edit: how far to noise, in (0, 1]: GCTM time t0; for a "
                                   "CTM sigma = t0 / (1 - t0) (same signal-to-noise ratio)."),
    strokes: str | None = typer.Option(None, "--strokes", help="edit: the image with painted strokes (SDEdit stroke editing)."),
    mask: str | None = typer.Option(None, "--mask", help="edit: white where the strokes apply "
                                    "[default: wherever STROKES differs from IMAGE]."),
    keep_unmasked: bool = typer.Option(False, "--keep-unmasked", help="edit: paste the original back outside the mask."),
    seed: int = typer.Option(0, "--seed", help="Item i uses seed + i (source noise, re-noising, random degradations)."),
    batch: int = typer.Option(256, "--batch", min=1, help="Items per forward pass (does not change the results)."),
    ema: str = typer.Option("ema", "--ema", help="Which weights of the checkpoint: ema, net, target, or ema_<rate>."),
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Translate INPUT with a GCTM in one step (Kim et al. 2024b), or `translate edit IMAGE`: SDEdit / stroke
    editing with a CTM or a GCTM trained from Gaussian noise.

    The same --seed gives the same outputs at any --batch. Results go to --out; the summary to stdout.
    """
    rep = Reporter(json_out)
    if source == "edit":
        if image is None:
            raise UserError("`ctmtool translate edit` needs IMAGE: an image file, folder or .npz to edit")
        if degrade:
            raise UserError("--degrade belongs to `ctmtool translate INPUT`, not to `translate edit`")
        _edit(rep, image, ckpt, out, strength, strokes, mask, keep_unmasked, nfe, gamma, grid, seed, batch, ema,
              device, force)
        return
    if image is not None:
        raise UserError(f"unexpected second argument {image!r}; `ctmtool translate` takes one INPUT "
                        "(use `ctmtool translate edit IMAGE` to edit)")
    if strokes is not None or mask is not None or keep_unmasked:
        raise UserError("--strokes, --mask and --keep-unmasked belong to `ctmtool translate edit IMAGE`")
    _translate(rep, source, ckpt, out, nfe, gamma, degrade, grid, seed, batch, ema, device, force)


def register(app: typer.Typer) -> None:
    app.command("translate")(translate_cmd)
