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
from typing import Annotated, Literal

import typer

from ctmtool.cli.common import (
    BatchOpt,
    DefaultCommand,
    DefaultGroup,
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    NoLimitsOpt,
    OutOpt,
    Reporter,
    RequiredCkptOpt,
    at_least,
    check_output,
    handle_errors,
    limits,
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
    if grid_path is not None and out != "-" and Path(out).resolve() == grid_path.resolve():
        raise UserError(f"--grid {grid} and --out {out} are the same file; give each its own path")
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


def _write_both(write_out, write_grid) -> dict:
    """The side-by-side grid, then the outputs: when the second fails, the first is removed (one command's outputs
    are all written or none)."""
    grid = write_grid() if write_grid is not None else None
    try:
        info = write_out()
    except BaseException:
        if grid is not None:
            Path(grid).unlink(missing_ok=True)
        raise
    if grid is not None:
        info["grid"] = grid
    return info


def _timed(rep: Reporter, n: int, what: str, fn):
    t0 = time.time()
    with rep.progress(n, what, unit="items") as advance:
        y = fn(advance)
    return y, time.time() - t0


def _translate(rep: Reporter, src: str, ckpt: str, out: str, nfe: int, gamma: float, degrade: bool, grid: str | None,
               seed: int, batch: int, ema: str, device: str, force: bool, metrics: str | None = None,
               ref: str | None = None, class_label: int | None = None) -> None:
    from ctmtool.jobs import inputs
    from ctmtool.jobs.items import class_labels, translate_items
    from ctmtool.jobs.outputs import check_out, write_items
    from ctmtool.jobs.plan import refuse_translation
    from ctmtool.jobs.restoration_refs import references
    from ctmtool.metrics.restoration import parse_restoration_metrics

    wanted = parse_restoration_metrics(metrics) if metrics is not None else None
    if ref is not None and wanted is None:
        raise UserError("--ref gives the references of --metrics; add --metrics psnr,ssim (or drop --ref)")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    refuse_translation(model, nfe, gamma)
    out_path = check_out(out, model.is_image, force)
    with input_path(src) as staged:
        data = inputs.load_inputs(staged, model, split_pairs=True, log=rep.log)
    x = clean = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    refs = references(model, data, ref, degrade, log=rep.log) if wanted is not None else None
    labels = class_labels(model, len(x), class_label, data.labels)
    if degrade:
        x = inputs.degrade(x, model, seed)
    rep.log(f"translating {len(x)} items with {model.path} ({model.preset.gctm.coupling}, NFE {nfe}) on {dev}")
    y, seconds = _timed(rep, len(x), "translate", lambda adv: translate_items(
        model, x, nfe=nfe, gamma=gamma, seed=seed, batch=batch, device=dev, progress=adv, labels=labels))
    scores = {}
    if refs is not None:
        from ctmtool.metrics.restoration import restoration_metrics

        scores = restoration_metrics(y, refs[0], wanted)
        scores.pop("per_image")
        scores["metrics_ref"] = refs[1]
    cols = ([clean] if degrade else []) + [x, y] + ([data.other] if data.other is not None else [])
    titles = (["clean"] if degrade else []) + ["input", "translated"] + (["paired"] if data.other is not None else [])
    info = _write_both(lambda: write_items(y, out_path, model.is_image, inputs=x, names=data.names, grid=False),
                       grid_path and (lambda: _grid(cols, grid_path, model, titles, target=True)))
    rep.result({**info, "n": len(y), "nfe": nfe, "gamma": gamma, "coupling": model.preset.gctm.coupling,
                "degrade": degrade, "seed": seed, "checkpoint": str(model.path), **scores,
                **({"class": class_label if class_label is not None else "from the inputs"} if labels is not None else {}),
                "mean_displacement": round(float((y - x).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="translate")


def _edit(rep: Reporter, image: str, ckpt: str, out: str, strength: float | None, strokes: str | None,
          mask: str | None, keep_unmasked: bool, nfe: int, gamma: float | None, grid: str | None, seed: int,
          batch: int, ema: str, device: str, force: bool, restore: str | None = None, factor: int = 8) -> None:
    if restore is not None:
        _restore(rep, image, ckpt, out, restore, factor, 1.0 if strength is None else strength, mask, nfe,
                 1.0 if gamma is None else gamma, grid, seed, batch, ema, device, force, strokes, keep_unmasked)
        return
    strength = 0.5 if strength is None else strength
    gamma = 0.0 if gamma is None else gamma
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
    cols = [x] + ([painted] if painted is not None else []) + [y]
    titles = ["input"] + (["painted"] if painted is not None else []) + [f"edited at strength {strength:g}"]
    info = _write_both(lambda: write_items(y, out_path, model.is_image, inputs=start, names=data.names, grid=False),
                       grid_path and (lambda: _grid(cols, grid_path, model, titles)))
    rep.result({**info, "n": len(y), "kind": model.kind, "strength": strength, "level": round(level, 6),
                "level_unit": unit, "nfe": nfe, "gamma": gamma, "strokes": strokes, "mask": mask, "seed": seed,
                "checkpoint": str(model.path), "mean_change": round(float((y - start).flatten(1).norm(dim=1).mean()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)},
               title="edit")


def _restore(rep: Reporter, image: str, ckpt: str, out: str, task: str, factor: int, strength: float,
             mask: str | None, nfe: int, gamma: float, grid: str | None, seed: int, batch: int, ema: str,
             device: str, force: bool, strokes: str | None, keep_unmasked: bool) -> None:
    """`translate edit IMAGE --restore TASK`: zero-shot inpainting / colourisation / super-resolution."""
    from ctmtool.core.editing import check_editable, strength_to_level
    from ctmtool.core.zero_shot import TASKS, centre_hole, check_task, observed
    from ctmtool.jobs import inputs
    from ctmtool.jobs.items import restore_items
    from ctmtool.jobs.outputs import check_out, write_items

    if task not in TASKS:
        raise UserError(f"--restore {task}: choose among {', '.join(TASKS)}")
    if strokes is not None or keep_unmasked:
        raise UserError("--strokes and --keep-unmasked are for stroke editing, not --restore")
    if mask is not None and task != "inpaint":
        raise UserError("--mask marks the hole of --restore inpaint; drop it for colorize / superres")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    check_editable(model)
    level = strength_to_level(model, strength)
    check_editable(model, level)
    out_path = check_out(out, model.is_image, force)
    with input_path(image) as staged:
        data = inputs.load_inputs(staged, model, log=rep.log)
    y = data.x
    check_out(out, model.is_image, force, one_png_for=len(y))
    hole = inputs.load_mask(mask, model, len(y), rep.log) if mask is not None else (
        centre_hole(tuple(model.data_shape)) if task == "inpaint" else None)
    check_task(task, tuple(model.data_shape), factor, hole)
    rep.log(f"zero-shot {task} of {len(y)} images with {model.path} ({model.kind}), {nfe} jumps from level "
            f"{level:.4g}, gamma {gamma}")
    x, seconds = _timed(rep, len(y), task, lambda adv: restore_items(
        model, y, task, level, hole=hole, factor=factor, nfe=nfe, gamma=gamma, seed=seed, batch=batch, device=dev,
        progress=adv))
    seen = observed(task, y, None if hole is None else hole.expand(len(y), -1, -1, -1), factor)
    info = _write_both(lambda: write_items(x, out_path, model.is_image, inputs=seen, names=data.names, grid=False),
                       grid_path and (lambda: _grid([y, seen, x], grid_path, model,
                                                             ["input", "observed", f"restored ({task})"])))
    rep.result({**info, "n": len(x), "kind": model.kind, "restore": task, "level": round(level, 6), "nfe": nfe,
                "gamma": gamma, "factor": factor if task == "superres" else None, "mask": mask, "seed": seed,
                "checkpoint": str(model.path),
                "known_part_error": round(float((observed(task, x, None if hole is None else hole.expand(
                    len(x), -1, -1, -1), factor) - seen).abs().max()), 6),
                "seconds": round(seconds, 3), "items_per_second": round(len(x) / max(seconds, 1e-9), 1)},
               title="restore")



app = typer.Typer(cls=DefaultGroup, rich_markup_mode=None, no_args_is_help=False,
                  short_help="One-step GCTM translation of inputs; `translate edit` for SDEdit / stroke editing.")

NfeOpt = Annotated[int, typer.Option("--nfe", help="Jumps along the time grid (1: one step, G(x1, 1, 0)).")]
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
    gamma: Annotated[float, typer.Option("--gamma", help="0 deterministic jumps ... 1 re-noise fully between jumps "
                                                         "(Gaussian sources only).")] = 0.0,
    degrade: Annotated[bool, typer.Option("--degrade", help="Apply the model's own degradation (coupling corrupt:<op>) "
                                 "to clean inputs first, to see before/after.")] = False,
    grid: GridOpt = None,
    metrics: Annotated[str | None, typer.Option("--metrics", metavar="psnr,ssim,lpips", help="Score the outputs "
                                       "against references: comma-separated among psnr, ssim, lpips (GCTM's "
                                       "eval_inverse). References: --ref, else the clean inputs (--degrade), else the "
                                       "target halves of paired inputs.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", metavar="IMAGES", help="--metrics: reference images (folder, "
                                   ".zip, .npz), matched to the inputs by file name, else by order.")] = None,
    class_label: Annotated[int | None, typer.Option("--class", help="Class label for a class-conditional GCTM "
                                   "[default: the inputs' class sub-folders].")] = None,
    seed: ItemSeedOpt = 0,
    batch: BatchOpt = 256,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Translate INPUT with a GCTM in one step (Kim et al. 2024b); `ctmtool translate edit IMAGE` edits (SDEdit).

    The same --seed gives the same outputs at any --batch. Results go to --out; the summary to stdout (to stderr
    with --out -).
    """
    rep = Reporter(json_out, data_on_stdout=out == "-")
    at_least(1, nfe=nfe, batch=batch)
    limits(rep, no_limits, nfe=nfe)
    _translate(rep, source, str(ckpt), out, nfe, gamma, degrade, grid, seed, batch, ema, device, force, metrics, ref,
               class_label)


@app.command("edit", cls=DefaultCommand, short_help="SDEdit / stroke editing / zero-shot restoration with a CTM or a "
                                                    "Gaussian-source GCTM.")
@handle_errors
def edit_cmd(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The image(s) to edit: image file, folder, .zip, "
                                         ".npz, or - (.npz/.npy bytes on stdin).")],
    ckpt: RequiredCkptOpt = ...,
    out: Annotated[str, OutOpt.__metadata__[0]] = ...,
    strength: Annotated[float | None, typer.Option("--strength", help="How far to noise, in (0, 1]: GCTM time t0; for "
                                   "a CTM sigma = t0 / (1 - t0) (same signal-to-noise ratio) [default: 0.5; 1 with "
                                   "--restore].")] = None,
    restore: Annotated[Literal["inpaint", "colorize", "superres"] | None, typer.Option(
        "--restore", help="Zero-shot restoration by iterative jumps (CTM code's application_sample, GCTM Alg. 4): "
                          "inpaint (hole: --mask, white = missing; default the centre box), colorize, superres.")] = None,
    factor: Annotated[int, typer.Option("--factor", help="--restore superres: patch size whose means are kept (the "
                                        "official code: 8).")] = 8,
    strokes: Annotated[str | None, typer.Option("--strokes", metavar="FILE",
                                                help="The image with painted strokes (SDEdit stroke editing).")] = None,
    mask: Annotated[str | None, typer.Option("--mask", metavar="FILE", help="White where the strokes apply "
                                    "[default: wherever STROKES differs from IMAGE]; with --restore inpaint: the hole.")] = None,
    keep_unmasked: Annotated[bool, typer.Option("--keep-unmasked", help="Paste the original back outside the mask.")] = False,
    nfe: NfeOpt = 1,
    gamma: Annotated[float | None, typer.Option("--gamma", help="0 deterministic jumps ... 1 re-noise fully between "
                                                "jumps [default: 0; 1 with --restore].")] = None,
    grid: GridOpt = None,
    seed: ItemSeedOpt = 0,
    batch: BatchOpt = 256,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """SDEdit / stroke editing (Meng et al. 2022) of IMAGE with a CTM, or a GCTM trained from Gaussian noise: noise
    the image to --strength, then jump back with --nfe steps; with --strokes, the painted image is the start (inside
    --mask), and --keep-unmasked pastes the original back outside it; --restore: zero-shot restoration."""
    rep = Reporter(json_out, data_on_stdout=out == "-")
    at_least(1, nfe=nfe, batch=batch)
    limits(rep, no_limits, nfe=nfe)
    _edit(rep, image, str(ckpt), out, strength, strokes, mask, keep_unmasked, nfe, gamma, grid, seed, batch, ema,
          device, force, restore, factor)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="translate")
