"""`ctmtool distill`: train a Consistency Trajectory Model from a teacher (or without one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctmtool.cli.common import (
    Command,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    NoLimitsOpt,
    PresetOpt,
    Reporter,
    SetOpt,
    handle_errors,
    select_device,
)
from ctmtool.cli.teacher import AutoResumeOpt, DownloadOpt, check_run_limits, prepare, training_overrides


@handle_errors
def distill_cmd(
    preset: PresetOpt = "toy",
    teacher: Annotated[str | None,
                       typer.Option("--teacher", metavar="FILE|RUN_DIR",
                                    help="Teacher checkpoint (ctmtool teacher, or an imported EDM one). "
                                       "toy uses the exact mixture denoiser by default.")] = None,
    data: Annotated[str | None,
                    typer.Option("--data", metavar="PATH", help="Data path; overrides data.path.")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", metavar="DIR", help="Where checkpoints and "
                                "samples go (default: runs/<preset>/ctm).")] = None,
    kimg: Annotated[float | None, typer.Option("--kimg", help="Train for this many thousand images.")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Train for this many minutes.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --run-dir "
                                "(also how the GAN phase starts from a CTM+DSM run: --resume --set "
                                "gan.enabled=true).")] = False,
    auto_resume: AutoResumeOpt = False,
    download: DownloadOpt = False,
    overrides: SetOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Distill a CTM G(x_t, t, s) (Kim et al. 2024): CTM + DSM losses, optional GAN phase; checkpoints in
    --run-dir."""
    from ctmtool.config import load_preset
    from ctmtool.jobs.run_dirs import default_run_dir
    from ctmtool.train.run import train

    rep = Reporter(json_out)
    p = load_preset(preset, training_overrides("distill", kimg, minutes, overrides))
    check_run_limits(p, "distill", no_limits, rep)
    run_dir = run_dir or default_run_dir(p.name, "gctm" if p.gctm is not None else "ctm")
    resume = prepare(p, run_dir, data, download, resume, auto_resume, rep)
    res = train(p, "distill", run_dir, select_device(device), rep, teacher=teacher, data_path=data,
                resume=resume, force=force)
    rep.result({"checkpoint": str(res.checkpoint), "kimg": round(res.kimg, 3), "steps": res.steps,
                "seconds": round(res.seconds, 1), "images_per_second": round(res.images_per_second, 1),
                "stopped_by": res.stopped_by, **res.last}, title="distill")


def register(app: typer.Typer) -> None:
    app.command("distill", cls=Command,
                short_help="Distill a CTM from a teacher (or train a GCTM for presets with "
                           "[gctm]).")(distill_cmd)
