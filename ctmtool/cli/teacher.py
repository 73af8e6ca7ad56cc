"""`ctmtool teacher`: train an EDM teacher; `ctmtool teacher import` is an alias of `ctmtool import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctmtool.cli.common import (
    Command,
    CommandGroup,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    NoLimitsOpt,
    PresetOpt,
    Reporter,
    SetOpt,
    handle_errors,
    limits,
    select_device,
)
from ctmtool.cli.import_ import import_cmd
from ctmtool.errors import UserError

app = typer.Typer(cls=CommandGroup, rich_markup_mode=None,
                  help="Train a diffusion teacher (EDM), or import a published EDM checkpoint.",
                  short_help="Train an EDM teacher, or `teacher import` a published EDM checkpoint.",
                  invoke_without_command=True, no_args_is_help=False)


BUILT_IN = ("toy", "digits")  # data sources that read no files: --data would be ignored
LIFTED = 1e9  # kimg or minutes when the other one alone bounds the run


def check_run_limits(p, section: str, no_limits: bool, rep: Reporter) -> None:
    """The run's duration against `ctmtool.limits` (a --set of kimg or minutes included)."""
    cfg = getattr(p, section)
    limits(rep, no_limits, kimg=None if cfg.kimg == LIFTED else cfg.kimg,
           minutes=None if cfg.minutes in (None, LIFTED) else cfg.minutes)


def training_overrides(section: str, kimg: float | None, minutes: float | None,
                       overrides: list[str] | None) -> list[str]:
    """--kimg / --minutes as preset overrides (a given --kimg alone lifts the preset's time limit)."""
    out = list(overrides or [])
    if kimg is not None:
        if kimg <= 0:
            raise UserError(f"--kimg must be positive, got {kimg}")
        out.append(f"{section}.kimg={kimg}")
        if minutes is None:
            out.append(f"{section}.minutes={LIFTED:g}")
    if minutes is not None:
        if minutes <= 0:
            raise UserError(f"--minutes must be positive, got {minutes}")
        out.append(f"{section}.minutes={minutes}")
        if kimg is None:
            out.append(f"{section}.kimg={LIFTED:g}")
    return out


DownloadOpt = Annotated[bool, typer.Option(
    "--download",
    help="Fetch the CIFAR-10 archive into $CTMTOOL_DATA (or --data) when it is missing: a progress "
                       "bar, an md5 check, an atomic write.")]
AutoResumeOpt = Annotated[bool, typer.Option(
    "--auto-resume",
    help="Continue --run-dir if it holds checkpoints, else start a new run (for job schedulers "
                          "that restart a job).")]


def prepare(p, run_dir: Path, data: str | None, download: bool, resume: bool, auto_resume: bool,
            rep: Reporter):
    """Checks shared by `teacher` and `distill` before training starts; the data fetched with --download."""
    if resume and auto_resume:
        raise UserError("--resume and --auto-resume exclude each other: --resume requires checkpoints, "
                        "--auto-resume uses them when present; give one")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    if data is not None and p.data.source in BUILT_IN:
        raise UserError(f"--data {data} given, but preset {p.name!r} draws its own data (data.source = "
                        f"{p.data.source!r}); drop --data, or use a preset that reads files (e.g. cifar10)")
    if download:
        if p.data.source != "cifar10":
            raise UserError(f"--download fetches the CIFAR-10 archive, but preset {p.name!r} reads "
                            f"data.source = {p.data.source!r}; drop --download")
        from ctmtool.data.cifar10 import ARCHIVE_BYTES, fetch_cifar10

        with rep.progress(ARCHIVE_BYTES / 2**20, "download CIFAR-10", unit="MiB") as advance:
            found = fetch_cifar10(data or p.data.path, progress=lambda b: advance(b / 2**20))
        rep.log(f"CIFAR-10 archive: {found}")
    return "auto" if auto_resume else resume


@app.callback()
@handle_errors
def teacher_cmd(
    ctx: typer.Context,
    preset: PresetOpt = "toy",
    data: Annotated[str | None, typer.Option("--data", metavar="PATH", help="Data path (folder, .zip, .npz, "
                                "CIFAR-10 archive); overrides data.path.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", metavar="DIR", help="Where checkpoints and "
                                "samples go (default: runs/<preset>/teacher).")] = None,
    kimg: Annotated[float | None, typer.Option("--kimg", help="Train for this many thousand images.")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Train for this many minutes.")] = None,
    resume: Annotated[bool, typer.Option("--resume",
                                         help="Continue from the newest checkpoint in --run-dir.")] = False,
    auto_resume: AutoResumeOpt = False,
    download: DownloadOpt = False,
    overrides: SetOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a denoiser with the EDM loss (Karras et al. 2022); leaves checkpoints and a sample grid in
    --run-dir."""
    if ctx.invoked_subcommand is not None:
        return
    from ctmtool.config import load_preset
    from ctmtool.jobs.run_dirs import default_run_dir
    from ctmtool.train.run import train

    rep = Reporter(json_out)
    p = load_preset(preset, training_overrides("teacher", kimg, minutes, overrides))
    check_run_limits(p, "teacher", no_limits, rep)
    run_dir = run_dir or default_run_dir(p.name, "teacher")
    resume = prepare(p, run_dir, data, download, resume, auto_resume, rep)
    res = train(p, "teacher", run_dir, select_device(device), rep, data_path=data, resume=resume, force=force)
    rep.result({"checkpoint": str(res.checkpoint), "kimg": round(res.kimg, 3), "steps": res.steps,
                "seconds": round(res.seconds, 1), "images_per_second": round(res.images_per_second, 1),
                "stopped_by": res.stopped_by, **res.last}, title="teacher")


# `ctmtool teacher import` is an alias of `ctmtool import`: the same command, the same code.
app.command("import", cls=Command, help=import_cmd.__doc__)(import_cmd)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="teacher")
