"""`ctmtool likelihood`: negative log-likelihood and bits/dim of data under a teacher, a CTM or an analytic GMM."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Annotated

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

EXACT_MAX_DIM = 16  # --divergence auto: exact up to this many dimensions, Hutchinson beyond
PER_ITEM_EXTS = (".csv", ".jsonl")
METHODS = ("ode", "elbo")
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBE_DISTS = ("rademacher", "gaussian")
SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "rk4", "midpoint", "heun3", "euler")
FIXED_SOLVERS = ("rk4", "midpoint", "heun3", "euler")
DRAW_AVERAGES = ("logmeanexp", "mean")


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    """Validate a choice here, so that a wrong value is one `error:` line like every other input error."""
    if value not in allowed:
        raise UserError(f"unknown {option} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _load_model(ckpt: Path | None, run_dir: Path, preset: str | None, analytic: bool, which: str, device, rep: Reporter):
    from ctmtool.config import load_preset
    from ctmtool.models import analytic_model, load_model, newest_checkpoint

    if analytic:
        if ckpt is not None:
            raise UserError("--analytic and --ckpt exclude each other; give one model")
        if preset is None:
            raise UserError("--analytic needs --preset NAME (a preset with a Gaussian-mixture [data.gmm] table)")
        model = analytic_model(load_preset(preset))
        model.net.to(device)
        return model, f"analytic:{model.preset.name}"
    if preset is not None:
        raise UserError("--preset is only used with --analytic (a checkpoint carries its own preset)")
    if ckpt is None:
        ckpt = newest_checkpoint(run_dir)
        rep.log(f"using checkpoint {ckpt} (newest in {run_dir})")
    return load_model(ckpt, which, device), str(ckpt)


def _check_fit(ds, model) -> None:
    if tuple(ds.shape) != tuple(model.data_shape):
        what = "images" if ds.is_image else "points"
        raise UserError(f"{ds.name} holds {what} of shape {tuple(ds.shape)} but the model expects "
                        f"{tuple(model.data_shape)}; give data of the model's shape")
    if model.label_dim and ds.labels is None:
        raise UserError(f"the model is class-conditional ({model.label_dim} classes) but {ds.name} has no labels; "
                        "put images in class sub-folders or save 'labels' in the .npz")


def _write_per_item(path: Path, ev) -> None:
    rows = [{"name": name, "nll": float(nll), "bpd": float(bpd), "stderr": None if math.isnan(se) else float(se)}
            for name, nll, bpd, se in zip(ev.names, ev.nll.tolist(), ev.bpd.tolist(), ev.stderr.tolist(), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "nll", "bpd", "stderr"])
        w.writeheader()
        w.writerows({**r, "stderr": "" if r["stderr"] is None else r["stderr"]} for r in rows)


@handle_errors
def likelihood_cmd(
    data: Annotated[Path | None, typer.Argument(
        metavar="DATA", show_default=False, help="Folder/.zip of images, an image file, or an .npz with 'samples' "
                                 "(uint8 NHWC images or float (N, D) points).")] = None,
    ckpt: Annotated[Path | None, typer.Option(
        "--ckpt", help="Teacher or CTM checkpoint (default: the newest in --run-dir).")] = None,
    run_dir: Annotated[Path, typer.Option(
        "--run-dir", help="Where to look for the newest checkpoint without --ckpt.")] = Path("runs"),
    which: Annotated[str, typer.Option("--which", help="Weights inside the checkpoint: ema, net, ema_0.9999, ...")] = "ema",
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="Preset whose [data.gmm] mixture is the model (with --analytic).")] = None,
    analytic: Annotated[bool, typer.Option("--analytic", help="Use the exact Gaussian-mixture denoiser of --preset.")] = False,
    method: Annotated[str, typer.Option(
        "--method", help="ode: probability-flow ODE; elbo: variational bound (an upper bound on the NLL).")] = "ode",
    divergence: Annotated[str, typer.Option(
        "--divergence", help=f"auto|exact|hutchinson; auto = exact up to {EXACT_MAX_DIM} dimensions.")] = "auto",
    probes: Annotated[int, typer.Option("--probes", help="Hutchinson probes per item (2+ give a standard error).")] = 4,
    probe_dist: Annotated[str, typer.Option("--probe-dist", help="rademacher|gaussian Hutchinson probes.")] = "rademacher",
    solver: Annotated[str, typer.Option(
        "--solver", help=f"ODE method: {'|'.join(SOLVERS)} (the last four with fixed steps).")] = "dopri5",
    steps: Annotated[int, typer.Option("--steps", help="Steps in ln(sigma) for fixed-step solvers.")] = 100,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance of adaptive solvers.")] = 1e-3,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance of adaptive solvers.")] = 1e-3,
    elbo_samples: Annotated[int, typer.Option("--elbo-samples", help="(sigma, noise) pairs per item for --method elbo.")] = 128,
    dequant_draws: Annotated[int, typer.Option("--dequant-draws", help="Uniform dequantisation draws per image.")] = 1,
    draw_average: Annotated[str, typer.Option(
        "--draw-average", help="logmeanexp (tighter bound) | mean (of the logs): how draws are combined.")] = "logmeanexp",
    n: Annotated[int | None, typer.Option("--n", help="Evaluate the first N items (default: all).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Items per ODE solve.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the dequantisation and probe noise.")] = 0,
    device: DeviceOpt = "auto",
    per_item: Annotated[Path | None, typer.Option(
        "--per-item", help="Write one row per item (name, nll, bpd, stderr) to a .csv or .jsonl file.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Negative log-likelihood and bits/dim of DATA (Song et al. 2021, App. D.2; see docs/likelihood.md).

    Images are uniformly dequantised and reported in bits/dim of 8-bit data; points in nats (and bits) per item.
    """
    import torch

    from ctmtool.data.base import Dataset
    from ctmtool.data.images import load_images
    from ctmtool.likelihood import ODEOptions, evaluate, make_estimator, model_denoiser

    rep = Reporter(json_out)
    method = _choice("--method", method, METHODS)
    divergence = _choice("--divergence", divergence, DIVERGENCES)
    probe_dist = _choice("--probe-dist", probe_dist, PROBE_DISTS)
    solver = _choice("--solver", solver, SOLVERS)
    draw_average = _choice("--draw-average", draw_average, DRAW_AVERAGES)
    for option, value, least in (("--probes", probes, 1), ("--steps", steps, 1), ("--elbo-samples", elbo_samples, 2),
                                 ("--dequant-draws", dequant_draws, 1), ("--batch", batch, 1), ("--n", n, 1)):
        if value is not None and value < least:
            raise UserError(f"{option} must be at least {least} (got {value})")
    if not (rtol > 0 and atol > 0):
        raise UserError(f"--rtol and --atol must be positive (got {rtol}, {atol})")
    if data is None:
        raise UserError("missing DATA: give a folder, .zip or .npz of images, an image file, or an .npz of points")
    if not data.exists():
        raise UserError(f"{data} does not exist; give a folder, .zip or .npz of images, an image file, "
                        "or an .npz of float points")
    if per_item is not None:
        if per_item.suffix.lower() not in PER_ITEM_EXTS:
            raise UserError(f"--per-item {per_item}: use a .csv or .jsonl file name")
        check_output(per_item, force)
    dev = select_device(device)
    model, model_name = _load_model(ckpt, run_dir, preset, analytic, which, dev, rep)
    denoise = model_denoiser(model)
    rep.log(f"reading {data}")
    ds = load_images(data)
    _check_fit(ds, model)
    if not model.label_dim and ds.labels is not None:
        ds = Dataset(ds.values, None, 0, ds.name, ds.items)  # an unconditional model takes no labels
    dim = math.prod(ds.shape)
    div = divergence if divergence != "auto" else ("exact" if dim <= EXACT_MAX_DIM else "hutchinson")
    opts = ODEOptions(divergence=div, probes=probes, probe_dist=probe_dist, rtol=rtol, atol=atol,
                      method=solver, steps=steps)
    estimator = make_estimator(denoise, model.sigma_min, model.sigma_max, method, opts, elbo_samples)
    dtype = torch.float64 if model.kind == "analytic" else torch.float32  # networks run in float32
    total = len(ds) if n is None else min(n, len(ds))
    rep.log(f"{model_name}: {method} likelihood of {total} items of {ds.name} on {dev}")
    with rep.progress(total, "likelihood", "items") as advance:
        ev = evaluate(estimator, ds, n=total, batch=batch, dequant_draws=dequant_draws,
                      draw_average=draw_average, seed=seed, device=dev, dtype=dtype, progress=advance)
    if per_item is not None:
        _write_per_item(per_item, ev)
    out = ev.summary()
    out.update({"method": method, "model": model_name, "kind": model.kind, "data": ds.name,
                "sigma_min": model.sigma_min, "sigma_max": model.sigma_max, "seed": seed})
    if method == "ode":
        out.update({"divergence": div, "solver": solver})
        if div == "hutchinson":
            out.update({"probes": probes, "probe_dist": probe_dist})
        out.update({"rtol": rtol, "atol": atol} if solver not in FIXED_SOLVERS
                   else {"steps": steps})
    else:
        out["elbo_samples"] = elbo_samples
    if ds.is_image:
        out.update({"dequant_draws": dequant_draws, "draw_average": draw_average,
                    "units": "nats per 8-bit image in [0, 256) units; bits/dim of the discrete data"})
    if method == "elbo":
        out["bound"] = "upper bound on NLL"
    elif ds.is_image:
        out["bound"] = "upper bound on discrete NLL (uniform dequantisation)"
    else:
        out["bound"] = None
    if per_item is not None:
        out["per_item"] = str(per_item)
    rep.result(out, title="likelihood")


def register(app: typer.Typer) -> None:
    app.command("likelihood")(likelihood_cmd)
