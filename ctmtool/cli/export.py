"""`ctmtool export`: ONNX files (and torch.export programs) of a checkpoint's graphs, verified in ONNX
Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from ctmtool.cli.common import Command, EmaOpt, ForceOpt, JsonOpt, Reporter, RequiredCkptOpt, handle_errors
from ctmtool.errors import UserError


@handle_errors
def export_cmd(
    ckpt: RequiredCkptOpt = ...,
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE.onnx",
                             help="Main ONNX file, e.g. model.onnx; other graphs go beside it as "
                                  "model.<graph>.onnx."),
    ema: EmaOpt = "ema",
    tol: float = typer.Option(1e-4, "--tol",
                              help="Allowed max |onnxruntime - torch| relative to max(1, max |torch|)."),
    program: bool = typer.Option(True, "--program/--no-program",
                                 help="Also save torch.export programs (.pt2)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export the one-step generator and the jump G(x, t, s) of a CTM (a GCTM: translator and jump; a teacher:
    its denoiser) to ONNX with a dynamic batch, checked against PyTorch in ONNX Runtime on random inputs."""
    rep = Reporter(json_out)
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"export needs onnx, onnxscript and onnxruntime ({err.name} is missing); "
                        "install them with `pip install 'ctmtool[export]'`") from None
    from ctmtool.core.models import load_model
    from ctmtool.jobs.export import export_model
    from ctmtool.jobs.run_dirs import checkpoint_file

    if not tol > 0:
        raise UserError(f"--tol must be positive, got {tol}")
    model = load_model(checkpoint_file(ckpt), which=ema)
    result = export_model(model, out, tol=tol, program=program, force=force, opset=opset, log=rep.log)
    if json_out:
        rep.result(result)
        return
    table = {"kind": result["kind"], "tolerance": result["tolerance"]}
    for g in result["graphs"]:
        table[g["graph"]] = f"{g['file']}  (inputs {', '.join(g['inputs'])})"
        table[f"{g['graph']}: max |onnxruntime - torch|"] = f"{g['max_abs_diff_ort']:.3g}"
        if "max_abs_diff_program" in g:
            table[f"{g['graph']}: max |torch.export - torch|"] = f"{g['max_abs_diff_program']:.3g}"
    table["programs"] = ", ".join(result["programs"]) or "-"
    table["description"] = result["json"]
    rep.result(table, title="export")


def register(app: typer.Typer) -> None:
    app.command("export", cls=Command,
                short_help="Export a model to ONNX (one-step generator and jump G(x, t, s)), verified in "
                           "ONNX Runtime.")(export_cmd)
