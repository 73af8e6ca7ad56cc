"""`ctmtool import`: convert a published checkpoint (EDM, ctm-cifar10, GCTM) to a ctmtool checkpoint, safely."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from ctmtool.cli.common import Command, ForceOpt, JsonOpt, Reporter, check_output, handle_errors


@handle_errors
def import_cmd(
    path: Path = typer.Argument(..., metavar="FILE", help="A published checkpoint: EDM .pkl, ctm-cifar10 model*.pt / ema_*.pt, GCTM .pt."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE.safetensors", help="Output checkpoint (default: <name>.safetensors beside it)."),
    which: Literal["ema", "net"] = typer.Option("ema", "--ema", help="GCTM only: which weights of the file: ema "
                                                "(its net_ema, the default) or net."),
    var0: float | None = typer.Option(None, "--var0", help="GCTM only: Var x0 per dimension (its --vars[0])."),
    var1: float | None = typer.Option(None, "--var1", help="GCTM only: Var x1 per dimension, X1_eps_std^2 included."),
    cov01: float | None = typer.Option(None, "--cov01", help="GCTM only: Cov(x0, x1) per dimension (its --vars[2])."),
    smin: float = typer.Option(0.002, "--smin", help="GCTM only: its --smin (label at t = 0)."),
    smax: float = typer.Option(80.0, "--smax", help="GCTM only: its --smax (label at t = 1)."),
    grid: int = typer.Option(18, "--grid", help="GCTM only: its grid size N."),
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a published checkpoint (EDM, ctm-cifar10, GCTM, ADM) to ctmtool's; no stored code runs."""
    from ctmtool.importers import import_file

    rep = Reporter(json_out)
    out = check_output(out or path.with_suffix(".safetensors"), force)
    options = dict(which={"ema": "net_ema", "net": "net"}[which], var0=var0, var1=var1, cov01=cov01, smin=smin, smax=smax, grid=grid)
    res, written = import_file(path, out, **options)
    rep.result({"checkpoint": str(written), "format": res.meta.get("format") or res.meta.get("source"),
                "kind": res.kind, "data_shape": list(res.data_shape), "label_dim": res.preset.net.label_dim,
                "parameters": sum(t.numel() for t in res.state.values())}, title="imported")


def register(root: typer.Typer) -> None:
    root.command("import", cls=Command,
                 short_help="Convert a published checkpoint (EDM, ctm-cifar10, GCTM, ADM) to a ctmtool one.")(import_cmd)
