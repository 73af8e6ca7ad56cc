"""`ctmtool translate`: one-step translation with a GCTM; `ctmtool translate edit`: SDEdit / stroke editing.

A group whose sub-command is `edit`; any other first argument is INPUT of the default command:

    ctmtool translate INPUT --ckpt CKPT --out OUTPUT [--nfe N] [--gamma G] [--degrade] [--grid FILE] ...
    ctmtool translate edit IMAGE --ckpt CKPT --strength S --out OUTPUT [--strokes FILE [--mask FILE]] ...

INPUT / IMAGE: a folder of images, a .zip, an .npz (key `samples`), one image file, or for 2-D models an
.npz of float points (N, D). OUTPUT: a folder (one PNG per item, named after the inputs), an .npz (key
`samples`, plus `inputs`), one .png (a single image, or a scatter plot of 2-D points), or - (.npz bytes on
stdout; the summary then goes to stderr). INPUT / IMAGE `-` reads .npz bytes on stdin. To translate an input
literally named `edit`, write `./edit`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ctmtool.cli.common import (
    BatchOpt,
    DefaultCommand,
    DefaultGroup,
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    Reporter,
    RequiredCkptOpt,
    at_least,
    check_output,
    handle_errors,
    select_device,
)
from ctmtool.errors import UserError
from ctmtool.jobs.streams import input_path


def _open(ckpt: str, ema: str, device: str, out: str, grid: str | None, force: bool):
    """The model (checked finite), its device, and the checked outputs (before any work)."""
    from ctmtool.jobs.run_dirs import open_model

    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise UserError(f"--grid {grid}: give a .png file name")
    grid_path = check_output(grid, force) if grid else None
    dev = select_device(device)
    model, _ = open_model(ckpt, None, ema, dev)
    return model, dev, grid_path


def _grid(columns, path: Path, model, titles: list[str], target: bool = False, limit: int = 64) -> str:
    """The --grid picture: images side by side, or one scatter panel per column on the preset's range (the
    target data in grey under the last panel for a toy preset)."""
    from ctmtool.jobs.plots import preset_view, save_png, side_by_side

    cols = [c[:limit] for c in columns] if model.is_image else columns
    reference, extent = (None, None) if model.is_image else preset_view(model.preset)
    save_png(side_by_side(cols, model.is_image, reference=reference if target else None,
                          titles=titles, extent=extent), path)
    return str(path)


def _timed(rep: Reporter, n: int, what: str, fn):
    t0 = time.time()
    with rep.progress(n, what, unit="items") as advance:
        y = fn(advance)
    return y, time.time() - t0


def _translate(rep: Reporter, src: str, ckpt: str, out: str, nfe: int, gamma: float, degrade: bool, grid: str | None,
               seed: int, batch: int, ema: str, device: str, force: bool) -> None:
    from ctmtool.jobs import inputs
    from ctmtool.jobs.items import translate_items
    from ctmtool.jobs.outputs import check_out, write_items
    from ctmtool.jobs.plan import refuse_translation

    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    refuse_translation(model, nfe, gamma)
    out_path = check_out(out, model.is_image, force)
    with input_path(src) as staged:
        data = inputs.load_inputs(staged, model, split_pairs=True, log=rep.log)
    x = clean = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    if degrade:
        x = inputs.degrade(x, model, seed)
    rep.log(f"translating {len(x)} items with {model.path} ({model.preset.gctm.coupling}, NFE {nfe}) on {dev}")
    y, seconds = _timed(rep, len(x), "translate", lambda adv: translate_items(
        model, x, nfe=nfe, gamma=gamma, seed=seed, batch=batch, device=dev, progress=adv))
    info = write_items(y, out_path, model.is_image, inputs=x, names=data.names, grid=False)
    if grid_path is not None:
        cols = ([clean] if degrade else []) + [x, y] + ([data.other] if data.other is not None else [])
        titles = (["clean"] if degrade else []) + ["input", "translated"] + (["paired"] if data.other is not None else [])
        info["grid"] = _grid(cols, grid_path, model, titles, target=True)
    rep.result({**info, "n": len(y), "nfe": nfe, "gamma": gamma, "coupling": model.preset.gctm.coupling,
                "degrade": degrade, "seed": seed, "checkpoint": str(model.path),
                "mean_displacement": round(float((y - x).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="translate")


def _edit(rep: Reporter, image: str, ckpt: str, out: str, strength: float, strokes: str | None, mask: str | None,
          keep_unmasked: bool, nfe: int, gamma: float, grid: str | None, seed: int, batch: int, ema: str,
          device: str, force: bool) -> None:
    from ctmtool.core.editing import check_editable, composite, strength_to_level
    from ctmtool.jobs import inputs
    from ctmtool.jobs.items import edit_items
    from ctmtool.jobs.outputs import check_out, write_items

    if mask is not None and strokes is None:
        raise UserError("--mask goes with --strokes (it marks where the strokes apply)")
    if keep_unmasked and strokes is None:
        raise UserError("--keep-unmasked goes with --strokes")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    check_editable(model)
    level = strength_to_level(model, strength)
    check_editable(model, level)
    out_path = check_out(out, model.is_image, force)
    with input_path(image) as staged:
        data = inputs.load_inputs(staged, model, log=rep.log)
    x = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    s = inputs.load_strokes(strokes, model, len(x), rep.log) if strokes is not None else None
    m = inputs.load_mask(mask, model, len(x), rep.log) if mask is not None else None
    painted = composite(x, s, m) if s is not None else None
    unit = "t" if model.kind == "gctm" else "sigma"
    rep.log(f"editing {len(x)} items with {model.path} ({model.kind}) at strength {strength} ({unit} = {level:.4g}), NFE {nfe}")
    y, seconds = _timed(rep, len(x), "edit", lambda adv: edit_items(
        model, x, level, strokes=s, mask=m, keep_unmasked=keep_unmasked, nfe=nfe, gamma=gamma, seed=seed,
        batch=batch, device=dev, progress=adv))
    start = x if painted is None else painted
    info = write_items(y, out_path, model.is_image, inputs=start, names=data.names, grid=False)
    if grid_path is not None:
        titles = ["input"] + (["painted"] if painted is not None else []) + [f"edited at strength {strength:g}"]
        info["grid"] = _grid([x] + ([painted] if painted is not None else []) + [y], grid_path, model, titles)
    rep.result({**info, "n": len(y), "kind": model.kind, "strength": strength, "level": round(level, 6),
                "level_unit": unit, "nfe": nfe, "gamma": gamma, "strokes": strokes, "mask": mask, "seed": seed,
                "checkpoint": str(model.path), "mean_change": round(float((y - start).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="edit")


app = typer.Typer(cls=DefaultGroup, rich_markup_mode=None, no_args_is_help=False,
                  short_help="One-step GCTM translation of inputs; `translate edit` for SDEdit / stroke editing.")

NfeOpt = Annotated[int, typer.Option("--nfe", help="Jumps along the time grid (1: one step, G(x1, 1, 0)).")]
GammaOpt = Annotated[float, typer.Option("--gamma", help="0 deterministic jumps ... 1 re-noise fully between jumps "
                                                         "(Gaussian sources and editing only).")]
GridOpt = Annotated[str | None, typer.Option("--grid", metavar="FILE.png", help="Also write a side-by-side PNG: "
                                             "input | output (clean | degraded | output with --degrade).")]
ItemSeedOpt = Annotated[int, typer.Option("--seed", help="Item i uses seed + i (source noise, re-noising, random "
                                                         "degradations).")]


@app.command("run", cls=DefaultCommand, hidden=True)
@handle_errors
def translate_cmd(
    source: Annotated[str, typer.Argument(metavar="INPUT", help="Items to translate: folder, .zip, .npz, image file, "
                                 ".npz of points, or - (.npz/.npy bytes on stdin).")],
    ckpt: RequiredCkptOpt = ...,
    out: Annotated[str, OutOpt.__metadata__[0]] = ...,
    nfe: NfeOpt = 1,
    gamma: GammaOpt = 0.0,
    degrade: Annotated[bool, typer.Option("--degrade", help="Apply the model's own degradation (coupling corrupt:<op>) "
                                 "to clean inputs first, to see before/after.")] = False,
    grid: GridOpt = None,
    seed: ItemSeedOpt = 0,
    batch: BatchOpt = 256,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Translate INPUT with a GCTM in one step (Kim et al. 2024b); `ctmtool translate edit IMAGE` edits (SDEdit).

    The same --seed gives the same outputs at any --batch. Results go to --out; the summary to stdout (to stderr
    with --out -).
    """
    rep = Reporter(json_out, data_on_stdout=out == "-")
    at_least(1, nfe=nfe, batch=batch)
    _translate(rep, source, str(ckpt), out, nfe, gamma, degrade, grid, seed, batch, ema, device, force)


@app.command("edit", cls=DefaultCommand, short_help="SDEdit / stroke editing with a CTM or a Gaussian-source GCTM.")
@handle_errors
def edit_cmd(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The image(s) to edit: image file, folder, .zip, "
                                         ".npz, or - (.npz/.npy bytes on stdin).")],
    ckpt: RequiredCkptOpt = ...,
    out: Annotated[str, OutOpt.__metadata__[0]] = ...,
    strength: Annotated[float, typer.Option("--strength", help="How far to noise, in (0, 1]: GCTM time t0; for a "
                                   "CTM sigma = t0 / (1 - t0) (same signal-to-noise ratio).")] = 0.5,
    strokes: Annotated[str | None, typer.Option("--strokes", metavar="FILE",
                                                help="The image with painted strokes (SDEdit stroke editing).")] = None,
    mask: Annotated[str | None, typer.Option("--mask", metavar="FILE", help="White where the strokes apply "
                                    "[default: wherever STROKES differs from IMAGE].")] = None,
    keep_unmasked: Annotated[bool, typer.Option("--keep-unmasked", help="Paste the original back outside the mask.")] = False,
    nfe: NfeOpt = 1,
    gamma: GammaOpt = 0.0,
    grid: GridOpt = None,
    seed: ItemSeedOpt = 0,
    batch: BatchOpt = 256,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """SDEdit / stroke editing (Meng et al. 2022) of IMAGE with a CTM, or a GCTM trained from Gaussian noise: noise
    the image to --strength, then jump back with --nfe steps; with --strokes, the painted image is the start (inside
    --mask), and --keep-unmasked pastes the original back outside it."""
    rep = Reporter(json_out, data_on_stdout=out == "-")
    at_least(1, nfe=nfe, batch=batch)
    _edit(rep, image, str(ckpt), out, strength, strokes, mask, keep_unmasked, nfe, gamma, grid, seed, batch, ema,
          device, force)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="translate")
