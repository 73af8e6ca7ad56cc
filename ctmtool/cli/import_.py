"""`ctmtool import`: convert a published checkpoint (EDM, ctm-cifar10, GCTM, OpenAI ADM, Sony CTM) to
ctmtool's, safely."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from ctmtool.cli.common import Command, ForceOpt, JsonOpt, Reporter, check_output, handle_errors


@handle_errors
def import_cmd(
    path: Path = typer.Argument(..., metavar="FILE", help="A published checkpoint: EDM .pkl, ctm-cifar10 "
                                "model*.pt / ema_*.pt, GCTM .pt, OpenAI ADM edm_imagenet64_ema.pt, Sony CTM "
                                "ema_0.999_*.pt."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE.safetensors",
                                    help="Output checkpoint (default: <name>.safetensors beside it)."),
    ema: Literal["ema", "net"] | None = typer.Option(None, "--ema",
                                                     help="GCTM only: which weights of the file: ema "
                                                     "(its net_ema, the default) or net."),
    var0: float | None = typer.Option(None, "--var0",
                                      help="GCTM only: Var x0 per dimension (its --vars[0])."),
    var1: float | None = typer.Option(None, "--var1", help="GCTM only: Var x1 per dimension (its --vars[1]; "
                                      "X1_eps_std^2 is added as train_gctm.py does)."),
    cov01: float | None = typer.Option(None, "--cov01",
                                       help="GCTM only: Cov(x0, x1) per dimension (its --vars[2])."),
    x1_eps_std: float | None = typer.Option(None, "--x1-eps-std",
                                            help="GCTM only: its --X1_eps_std, the source noise "
                                            "`translate` adds to x1 as the official evaluation does "
                                            "[default: 0]."),
    smin: float | None = typer.Option(None, "--smin",
                                      help="GCTM only: its --smin (label at t = 0) [default: 0.002]."),
    smax: float | None = typer.Option(None, "--smax",
                                      help="GCTM only: its --smax (label at t = 1) [default: 80]."),
    grid: int | None = typer.Option(None, "--grid", help="GCTM only: its grid size N [default: 18]."),
    rho: float | None = typer.Option(None, "--rho", help="GCTM only: its --edm_rho [default: 7]."),
    dropout: float | None = typer.Option(None, "--dropout",
                                         help="ctm-cifar10, GCTM, OpenAI ADM: the network's dropout "
                                         "for further training (not stored in the files) [default: 0.13, "
                                         "0.1, 0]."),
    resolution: int | None = typer.Option(None, "--resolution",
                                          help="OpenAI ADM / Sony CTM only: image size, "
                                          "which the weights do not record [default: 64]."),
    head_channels: int | None = typer.Option(None, "--head-channels",
                                             help="OpenAI ADM / Sony CTM only: attention "
                                             "head width [default: 64, as both releases]."),
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a published checkpoint (EDM, ctm-cifar10, GCTM, OpenAI ADM, Sony CTM) to ctmtool's; no stored
    code runs.

    Only the options a file's format takes may be given (the GCTM ones for a GCTM file, ...).
    """
    from ctmtool.importers import import_file

    rep = Reporter(json_out)
    out = check_output(out or path.with_suffix(".safetensors"), force)
    given = dict(ema={"ema": "net_ema", "net": "net", None: None}[ema], var0=var0, var1=var1, cov01=cov01,
                 x1_eps_std=x1_eps_std, smin=smin, smax=smax, grid=grid, rho=rho, dropout=dropout,
                 resolution=resolution, head_channels=head_channels)
    res, written = import_file(path, out, **{k: v for k, v in given.items() if v is not None})
    rep.result({"checkpoint": str(written), "format": res.meta.get("format") or res.meta.get("source"),
                "kind": res.kind, "precond": res.preset.diffusion.precond, "data_shape": list(res.data_shape),
                "label_dim": res.preset.net.label_dim,
                "parameters": sum(t.numel() for t in res.state.values())}, title="imported")


def register(root: typer.Typer) -> None:
    root.command("import", cls=Command,
                 short_help="Convert a published checkpoint (EDM, ctm-cifar10, GCTM, OpenAI ADM, Sony CTM) "
                            "to a ctmtool one.")(import_cmd)
