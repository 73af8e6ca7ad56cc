"""`ctmtool likelihood`: negative log-likelihood and bits/dim of data under a teacher, a CTM or an analytic
GMM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ctmtool.cli.common import (
    CkptOpt,
    Command,
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    NoLimitsOpt,
    Reporter,
    RunDirOpt,
    check_output,
    handle_errors,
    limits,
    select_device,
)
from ctmtool.errors import UserError
from ctmtool.jobs.streams import input_path

# ctmtool.jobs.likelihood's choices (tests/cli/test_grammar.py checks they agree), spelled here so `--help`
# imports no torch
Solver = Literal["dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "rk4", "midpoint", "heun3",
                 "euler"]


@handle_errors
def likelihood_cmd(
    data: Annotated[str | None, typer.Argument(
        metavar="DATA", show_default=False,
        help="Folder/.zip of images, an image file, an .npz with 'samples' "
                                 "(uint8 NHWC images or float (N, D) points), or - (.npz/.npy bytes on "
                                 "stdin).")] = None,
    ckpt: CkptOpt = None,
    run_dir: RunDirOpt = None,
    ema: EmaOpt = "ema",
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", metavar="NAME|FILE.toml",
        help="Preset whose [data.gmm] mixture is the model (with --analytic).")] = None,
    analytic: Annotated[bool, typer.Option("--analytic", help="Use the exact Gaussian-mixture denoiser of "
                                "--preset.")] = False,
    protocol: Annotated[Literal["exact", "ctm-paper"], typer.Option(
        "--protocol",
        help="exact: ctmtool's PF-ODE / ELBO bound of dequantised data; ctm-paper: the CTM paper's "
                           "estimate (sony/ctm eval_bpd.py; uses only -n, --batch, --seed, --rtol, "
                           "--atol).")] = "exact",
    method: Annotated[Literal["ode", "elbo"], typer.Option(
        "--method",
        help="ode: probability-flow ODE; elbo: variational bound (an upper bound on the NLL).")] = "ode",
    divergence: Annotated[Literal["auto", "exact", "hutchinson"], typer.Option(
        "--divergence", help="auto = exact up to 16 dimensions (ctmtool.jobs.likelihood.EXACT_MAX_DIM), "
                             "Hutchinson beyond.")] = "auto",
    probes: Annotated[int, typer.Option("--probes",
                                        help="Hutchinson probes per item (2+ give a standard error).")] = 4,
    probe_dist: Annotated[Literal["rademacher", "gaussian"],
                          typer.Option("--probe-dist",
                                       help="rademacher|gaussian Hutchinson probes.")] = "rademacher",
    solver: Annotated[Solver, typer.Option(
        "--solver", help="ODE method (the last four with fixed steps).")] = "dopri5",
    steps: Annotated[int, typer.Option("--steps", help="Steps in ln(sigma) for fixed-step solvers.")] = 100,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance of adaptive solvers.")] = 1e-3,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance of adaptive solvers.")] = 1e-3,
    elbo_samples: Annotated[int, typer.Option("--elbo-samples",
                                              help="(sigma, noise) pairs per item for --method elbo.")] = 128,
    dequant_draws: Annotated[int, typer.Option("--dequant-draws",
                                               help="Uniform dequantisation draws per image.")] = 1,
    draw_average: Annotated[Literal["logmeanexp", "mean"], typer.Option(
        "--draw-average",
        help="logmeanexp (tighter bound) | mean (of the logs): how draws are combined.")] = "logmeanexp",
    n: Annotated[int | None, typer.Option("--num-samples", "-n", "--n", metavar="N",
                                          help="Evaluate the first N items (default: all).")] = None,
    batch: Annotated[int, typer.Option("--batch", "-b", metavar="N", help="Items per ODE solve.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the dequantisation and probe noise.")] = 0,
    device: DeviceOpt = "auto",
    per_item: Annotated[Path | None, typer.Option(
        "--per-item",
        help="Write one row per item (name, nll, bpd, stderr) to a .csv or .jsonl file.")] = None,
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Negative log-likelihood and bits/dim of DATA (Song et al. 2021, App. D.2; see docs/likelihood.md).

    Images are uniformly dequantised and reported in bits/dim of 8-bit data; points in nats (and bits) per
    item. Without --ckpt the newest checkpoint in --run-dir (default runs/toy/ctm) is used, and named on
    stderr.
    """
    from ctmtool.jobs.likelihood import (
        NLLOptions,
        check_per_item_path,
        likelihood_of,
        load_data,
        write_per_item,
    )
    from ctmtool.jobs.run_dirs import open_model

    rep = Reporter(json_out)
    limits(rep, no_limits, n=n, steps=steps, probes=probes, elbo_samples=elbo_samples,
           dequant_draws=dequant_draws)
    if protocol not in ("exact", "ctm-paper"):
        raise UserError(f"--protocol must be exact or ctm-paper, got {protocol!r}")
    if protocol == "ctm-paper" and per_item is not None:
        raise UserError("--per-item goes with --protocol exact")
    opts = NLLOptions(method, divergence, probes, probe_dist, solver, steps, rtol, atol, elbo_samples,
                      dequant_draws, draw_average).check()
    if data is None:
        raise UserError("missing DATA: give a folder, .zip or .npz of images, an image file, or an .npz of "
                        "points")
    if per_item is not None:
        check_per_item_path(per_item)
        check_output(per_item, force)
    dev = select_device(device)
    model, source = open_model(ckpt, run_dir, ema, dev, analytic=analytic, preset=preset)
    rep.log(f"using {source}")
    with input_path(data) as staged:
        ds = load_data(staged, model)
    if protocol == "ctm-paper":
        from ctmtool.jobs.likelihood import paper_likelihood_of

        total = len(ds) if n is None else min(max(n, 0), len(ds))
        rep.log(f"ctm-paper likelihood of {total} items of {ds.name} on {dev}")
        with rep.progress(total, "likelihood", "items") as advance:
            out = paper_likelihood_of(model, ds, n=n, batch=batch, seed=seed, rtol=rtol, atol=atol,
                                      device=dev, progress=advance)
        out["model"] = str(model.path) if model.path else source
        rep.result(out, title="likelihood")
        return
    rep.log(f"{opts.method} likelihood of {len(ds) if n is None else min(n, len(ds))} items of {ds.name} on "
            f"{dev}")
    with rep.progress(len(ds) if n is None else min(max(n, 0), len(ds)), "likelihood", "items") as advance:
        out, ev = likelihood_of(model, ds, opts, n=n, batch=batch, seed=seed, device=dev, progress=advance)
    out["model"] = str(model.path) if model.path else source
    if str(data) == "-":
        out["data"] = "-"  # standard input, not the temporary file it was staged in
    if per_item is not None:
        out["per_item"] = str(write_per_item(per_item, ev))
    rep.result(out, title="likelihood")


def register(app: typer.Typer) -> None:
    app.command("likelihood", cls=Command,
                short_help="Negative log-likelihood and bits/dim of data (PF-ODE or ELBO).")(likelihood_cmd)
