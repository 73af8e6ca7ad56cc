"""`ctmtool translate`: one-step translation with a GCTM; `ctmtool translate edit`: SDEdit / stroke editing.

A group whose sub-command is `edit`; any other first argument is INPUT of the default command:

    ctmtool translate INPUT --ckpt CKPT --out OUTPUT [--nfe N] [--gamma G] [--degrade] [--grid FILE] ...
    ctmtool translate edit IMAGE --ckpt CKPT --strength S --out OUTPUT [--strokes FILE [--mask FILE]] ...
    ctmtool translate edit IMAGE --ckpt CKPT --to-class B [--from-class A] --out OUTPUT  (latent manipulation)

INPUT / IMAGE: a folder of images, a .zip, an .npz (key `samples`), one image file, or for 2-D models an
.npz of float points (N, D). OUTPUT: a folder (one PNG per item, named after the inputs), an .npz (key
`samples`, plus `inputs`), one .png (a single image, or a scatter plot of 2-D points), or - (.npz bytes on
stdout; the summary then goes to stderr). INPUT / IMAGE `-` reads .npz bytes on stdin. To translate an input
literally named `edit`, write `./edit`.
"""

from __future__ import annotations

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
    check_output,
    handle_errors,
    limits,
    select_device,
)
from ctmtool.errors import UserError


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


def _translate(rep: Reporter, src: str, ckpt: str, out: str, nfe: int, gamma: float, degrade: bool,
               grid: str | None, seed: int, batch: int, ema: str, device: str, force: bool,
               metrics: str | None = None, ref: str | None = None, class_label: int | None = None) -> None:
    from ctmtool.jobs.translation import translation_job
    from ctmtool.metrics.restoration import parse_restoration_metrics

    wanted = parse_restoration_metrics(metrics) if metrics is not None else None
    if ref is not None and wanted is None:
        raise UserError("--ref gives the references of --metrics; add --metrics psnr,ssim (or drop --ref)")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    rep.result(translation_job(model, src, out, nfe=nfe, gamma=gamma, degrade=degrade, grid=grid_path,
                               seed=seed, batch=batch, device=dev, force=force, report=rep, metrics=wanted,
                               ref=ref, class_label=class_label), title="translate")


def _manipulate(rep: Reporter, image: str, ckpt: str, out: str, to_class: int, from_class: int | None,
                encode_steps: int | None, nfe: int, grid: str | None, batch: int, ema: str, device: str,
                force: bool) -> None:
    """`translate edit IMAGE --to-class B`: latent manipulation with a GCTM of coupling `latent`."""
    from ctmtool.jobs.translation import manipulation_job

    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    steps = 18 if encode_steps is None else encode_steps
    rep.result(manipulation_job(model, image, out, to_class=to_class, from_class=from_class,
                                encode_steps=steps, nfe=nfe, grid=grid_path, batch=batch, device=dev,
                                force=force, report=rep),
               title="latent manipulation")


def _edit(rep: Reporter, image: str, ckpt: str, out: str, strength: float | None, strokes: str | None,
          mask: str | None, keep_unmasked: bool, nfe: int, gamma: float | None, grid: str | None, seed: int,
          batch: int, ema: str, device: str, force: bool, restore: str | None = None, factor: int = 8,
          to_class: int | None = None, from_class: int | None = None,
          encode_steps: int | None = None) -> None:
    if to_class is not None:
        others = {"--strength": strength, "--strokes": strokes, "--mask": mask, "--restore": restore,
                  "--gamma": gamma, "--keep-unmasked": keep_unmasked or None}
        given = [k for k, v in others.items() if v is not None]
        if given:
            raise UserError(f"latent manipulation (--to-class) takes no {', '.join(given)} (SDEdit / "
                            "restoration options); drop them")
        _manipulate(rep, image, ckpt, out, to_class, from_class, encode_steps, nfe, grid, batch, ema, device,
                    force)
        return
    if from_class is not None or encode_steps is not None:
        raise UserError("--from-class and --encode-steps go with --to-class (latent manipulation); "
                        "add --to-class B")
    if restore is not None:
        _restore(rep, image, ckpt, out, restore, factor, 1.0 if strength is None else strength, mask, nfe,
                 1.0 if gamma is None else gamma, grid, seed, batch, ema, device, force, strokes,
                 keep_unmasked)
        return
    from ctmtool.jobs.translation import edit_job

    strength = 0.5 if strength is None else strength
    gamma = 0.0 if gamma is None else gamma
    if mask is not None and strokes is None:
        raise UserError("--mask goes with --strokes (it marks where the strokes apply)")
    if keep_unmasked and strokes is None:
        raise UserError("--keep-unmasked goes with --strokes")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    rep.result(edit_job(model, image, out, strength=strength, strokes=strokes, mask=mask,
                        keep_unmasked=keep_unmasked, nfe=nfe, gamma=gamma, grid=grid_path, seed=seed,
                        batch=batch, device=dev, force=force, report=rep), title="edit")


def _restore(rep: Reporter, image: str, ckpt: str, out: str, task: str, factor: int, strength: float,
             mask: str | None, nfe: int, gamma: float, grid: str | None, seed: int, batch: int, ema: str,
             device: str, force: bool, strokes: str | None, keep_unmasked: bool) -> None:
    """`translate edit IMAGE --restore TASK`: zero-shot inpainting / colourisation / super-resolution."""
    from ctmtool.jobs.translation import restore_job

    if strokes is not None or keep_unmasked:
        raise UserError("--strokes and --keep-unmasked are for stroke editing, not --restore")
    if mask is not None and task != "inpaint":
        raise UserError("--mask marks the hole of --restore inpaint; drop it for colorize / superres")
    model, dev, grid_path = _open(ckpt, ema, device, out, grid, force)
    rep.result(restore_job(model, image, out, task=task, factor=factor, strength=strength, mask=mask, nfe=nfe,
                           gamma=gamma, grid=grid_path, seed=seed, batch=batch, device=dev, force=force,
                           report=rep),
               title="restore")



app = typer.Typer(cls=DefaultGroup, rich_markup_mode=None, no_args_is_help=False,
                  short_help="One-step GCTM translation of inputs; `translate edit` for SDEdit / stroke "
                             "editing.")

NfeOpt = Annotated[int, typer.Option("--nfe", help="Jumps along the time grid (1: one step, G(x1, 1, 0)).")]
GridOpt = Annotated[str | None,
                    typer.Option("--grid", metavar="FILE.png", help="Also write a side-by-side PNG: "
                                             "input | output (clean | degraded | output with --degrade).")]
ItemSeedOpt = Annotated[int,
                        typer.Option("--seed", help="Item i uses seed + i (source noise, re-noising, random "
                                                         "degradations).")]


@app.command("run", cls=DefaultCommand, hidden=True)
@handle_errors
def translate_cmd(
    source: Annotated[str, typer.Argument(metavar="INPUT",
                                          help="Items to translate: folder, .zip, .npz, image file, "
                                 ".npz of points, or - (.npz/.npy bytes on stdin).")],
    ckpt: RequiredCkptOpt = ...,
    out: Annotated[str, OutOpt.__metadata__[0]] = ...,
    nfe: NfeOpt = 1,
    gamma: Annotated[float,
                     typer.Option("--gamma", help="0 deterministic jumps ... 1 re-noise fully between jumps "
                                                         "(Gaussian sources only).")] = 0.0,
    degrade: Annotated[bool, typer.Option("--degrade",
                                          help="Apply the model's own degradation (coupling corrupt:<op>) "
                                 "to clean inputs first, to see before/after.")] = False,
    grid: GridOpt = None,
    metrics: Annotated[str | None,
                       typer.Option("--metrics", metavar="psnr,ssim,lpips", help="Score the outputs "
                                       "against references: comma-separated among psnr, ssim, lpips (GCTM's "
                                       "eval_inverse). References: --ref, else the clean inputs (--degrade), "
                                       "else the target halves of paired inputs.")] = None,
    ref: Annotated[str | None,
                   typer.Option("--ref", metavar="IMAGES", help="--metrics: reference images (folder, "
                                   ".zip, .npz), matched to the inputs by file name, else by order.")] = None,
    class_label: Annotated[int | None,
                           typer.Option("--class", help="Class label for a class-conditional GCTM "
                                   "[default: the inputs' class sub-folders].")] = None,
    seed: ItemSeedOpt = 0,
    batch: BatchOpt = 256,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Translate INPUT with a GCTM in one step (Kim et al. 2024b); `ctmtool translate edit IMAGE` edits
    (SDEdit).

    The same --seed gives the same outputs at any --batch. Results go to --out; the summary to stdout (to
    stderr with --out -).
    """
    rep = Reporter(json_out, data_on_stdout=out == "-")
    limits(rep, no_limits, nfe=nfe)  # --nfe and --batch below 1: refused once, by the plan (jobs/plan.py)
    _translate(rep, source, str(ckpt), out, nfe, gamma, degrade, grid, seed, batch, ema, device, force,
               metrics, ref, class_label)


@app.command("edit", cls=DefaultCommand,
             short_help="SDEdit / stroke editing / zero-shot restoration with a CTM or a "
                                                    "Gaussian-source GCTM; latent manipulation (--to-class).")
@handle_errors
def edit_cmd(
    image: Annotated[str,
                     typer.Argument(metavar="IMAGE", help="The image(s) to edit: image file, folder, .zip, "
                                         ".npz, or - (.npz/.npy bytes on stdin).")],
    ckpt: RequiredCkptOpt = ...,
    out: Annotated[str, OutOpt.__metadata__[0]] = ...,
    strength: Annotated[float | None,
                        typer.Option("--strength", help="How far to noise, in (0, 1]: GCTM time t0; for "
                                   "a CTM sigma = t0 / (1 - t0) (same signal-to-noise ratio) [default: 0.5; "
                                   "1 with --restore].")] = None,
    restore: Annotated[Literal["inpaint", "colorize", "superres"] | None, typer.Option(
        "--restore",
        help="Zero-shot restoration by iterative jumps (CTM code's application_sample, GCTM Alg. 4): "
                          "inpaint (hole: --mask, white = missing; default the centre box), colorize, "
                          "superres.")] = None,
    factor: Annotated[int, typer.Option("--factor",
                                        help="--restore superres: patch size whose means are kept (the "
                                        "official code: 8).")] = 8,
    strokes: Annotated[str | None, typer.Option("--strokes", metavar="FILE",
                                                help="The image with painted strokes (SDEdit stroke "
                                                     "editing).")] = None,
    mask: Annotated[str | None, typer.Option("--mask", metavar="FILE", help="White where the strokes apply "
                                    "[default: wherever STROKES differs from IMAGE]; with --restore inpaint: "
                                    "the hole.")] = None,
    keep_unmasked: Annotated[bool, typer.Option("--keep-unmasked",
                                                help="Paste the original back outside the mask.")] = False,
    to_class: Annotated[int | None, typer.Option(
        "--to-class", metavar="B", help="Latent manipulation (a GCTM of coupling 'latent'): encode IMAGE "
        "to its latent by the model's ODE, move it from its class's Gaussian to class B's, decode in --nfe "
        "jumps.")] = None,
    from_class: Annotated[int | None, typer.Option(
        "--from-class", metavar="A", help="--to-class: the class of the inputs [default: their class "
        "sub-folders, or an .npz's labels].")] = None,
    encode_steps: Annotated[int | None, typer.Option(
        "--encode-steps", help="--to-class: Heun steps of the encoding ODE (2 evaluations each, plus "
        "one) [default: 18].")] = None,
    nfe: NfeOpt = 1,
    gamma: Annotated[float | None,
                     typer.Option("--gamma", help="0 deterministic jumps ... 1 re-noise fully between "
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
    """SDEdit / stroke editing (Meng et al. 2022) of IMAGE with a CTM, or a GCTM trained from Gaussian noise:
    noise the image to --strength, then jump back with --nfe steps; with --strokes, the painted image is the
    start (inside --mask), and --keep-unmasked pastes the original back outside it; --restore: zero-shot
    restoration; --to-class B: latent manipulation with a GCTM of coupling 'latent'."""
    rep = Reporter(json_out, data_on_stdout=out == "-")
    limits(rep, no_limits, nfe=nfe)  # --nfe and --batch below 1: refused once, by the plan (jobs/plan.py)
    _edit(rep, image, str(ckpt), out, strength, strokes, mask, keep_unmasked, nfe, gamma, grid, seed, batch,
          ema, device, force, restore, factor, to_class, from_class, encode_steps)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="translate")
