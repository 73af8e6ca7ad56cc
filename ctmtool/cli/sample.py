"""`ctmtool sample`: gamma-sampling of a CTM, or Heun/Euler sampling of a teacher, to npz / png / folder / stdout."""

from __future__ import annotations

import sys
from pathlib import Path

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

app = typer.Typer(rich_markup_mode=None, help="Draw samples from a CTM (gamma-sampling) or a teacher (Heun/Euler).",
                  invoke_without_command=True, no_args_is_help=False)

CkptOpt = typer.Option(None, "--ckpt", help="Checkpoint (default: the newest *.safetensors in --run-dir, else under runs/).")


def parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, e.g. 80,2.5,0.002; got {text!r}") from None


def resolve_model(ckpt: Path | None, run_dir: Path, analytic: bool, preset: str | None, ema: str, device, rep):
    """The model to sample: an explicit checkpoint, the analytic mixture of a preset, or the newest checkpoint."""
    from ctmtool.config import load_preset
    from ctmtool.models import analytic_model, load_model, newest_checkpoint

    if analytic:
        if preset is None:
            raise UserError("--analytic needs --preset (a Gaussian-mixture preset such as toy)")
        return analytic_model(load_preset(preset))
    if ckpt is None:
        try:
            ckpt = newest_checkpoint(run_dir)
        except UserError:
            candidates = sorted(Path("runs").glob("**/*.safetensors"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise UserError(f"no checkpoint given and none found in {run_dir} or runs/; pass --ckpt FILE") from None
            ckpt = candidates[-1]
        rep.log(f"using the newest checkpoint: {ckpt}")
    return load_model(ckpt, which=ema, device=device)


def check_out_kind(out: str, is_image: bool, force: bool) -> None:
    """Refuse an output the samples cannot be written to, before any sampling is done."""
    if out == "-":
        return
    path = Path(out)
    if path.suffix in (".npz", ".png"):
        check_output(path, force)
    elif path.suffix:
        raise UserError(f"--out {out}: use a .npz file, a .png file, a folder, or - for stdout")
    elif not is_image:
        raise UserError("a folder of PNGs is for images; write 2-D samples to .npz, .png (scatter plot) or -")
    elif path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise UserError(f"output folder {path} exists and is not empty; pass --force to write into it or choose another folder")


def write_output(x, labels, out: str, is_image: bool, force: bool) -> dict:
    from ctmtool.visual import save_npz, save_png_folder, save_samples_png

    if out == "-":
        import numpy as np

        arr = x.float().cpu().numpy().reshape(len(x), -1)
        if is_image:
            arr = ((arr + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            np.savetxt(sys.stdout, arr, fmt="%d")
        else:
            np.savetxt(sys.stdout, arr, fmt="%.6f")
        return {"out": "-"}
    path = Path(out)
    if path.suffix == ".npz":
        check_output(path, force)
        return {"out": str(save_npz(x, path, is_image, labels)), "format": "npz"}
    if path.suffix == ".png":
        check_output(path, force)
        return {"out": str(save_samples_png(x, path, is_image)), "format": "png"}
    files = save_png_folder(x, path)
    return {"out": str(path), "format": "folder", "files": len(files)}


@app.callback()
@handle_errors
def sample_cmd(
    ctx: typer.Context,
    ckpt: Path | None = CkptOpt,
    run_dir: Path = typer.Option(Path("."), "--run-dir", help="Where to look for the newest checkpoint when --ckpt is omitted."),
    nfe: int = typer.Option(1, "--nfe", help="CTM network evaluations (gamma-sampling jumps)."),
    gamma: float = typer.Option(0.0, "--gamma", help="0 deterministic jumps ... 1 CM-style multistep (Kim et al. 2024, Sec. 5)."),
    sigmas: str | None = typer.Option(None, "--sigmas", help="Explicit decreasing schedule, e.g. 80,2.515,0.002 (overrides --nfe/--steps)."),
    solver: str | None = typer.Option(None, "--solver", help="gamma (CTM) | heun | euler (teacher) (default: gamma for a CTM, heun otherwise)."),
    steps: int = typer.Option(18, "--steps", help="Grid points for heun/euler (18 -> 35 NFE with Heun)."),
    n: int = typer.Option(64, "--n", "--num-samples", help="Number of samples (--num-samples under torchrun, whose own parser takes --n)."),
    batch: int = typer.Option(256, "--batch", help="Samples per forward pass (does not change the samples)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample; sample i uses seed + i."),
    class_label: int | None = typer.Option(None, "--class", help="Class index for a conditional model (default: random per image)."),
    ema: str = typer.Option("ema", "--ema", help="Which weights of the checkpoint: ema, net, target, or ema_<rate>."),
    analytic: bool = typer.Option(False, "--analytic", help="Sample the exact Gaussian-mixture teacher of --preset."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="With --analytic: the Gaussian-mixture preset."),
    out: str = typer.Option("samples.npz", "--out", "-o", help="samples.npz | grid.png | a folder (one PNG each) | - (stdout)."),
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Sample a CTM with gamma-sampling, or a teacher with Heun/Euler; the same seed gives the same images at any --batch."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    import torch

    from ctmtool.sampling import generate, resolve_schedule
    from ctmtool.solvers import solver_nfe

    rep = Reporter(json_out)
    if n < 1 or batch < 1:
        raise UserError("--n and --batch must be at least 1")
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"--gamma must be in [0, 1], got {gamma}")
    if out != "-" and Path(out).suffix in (".npz", ".png"):
        check_output(out, force)
    from ctmtool.sampling import distributed_generate
    from ctmtool.train import distributed as ddp

    dev = select_device(device)
    if ddp.env_world_size() > 1:  # under torchrun: each rank draws its own index range, rank 0 writes
        dev = ddp.setup(dev)
    model = resolve_model(ckpt, run_dir, analytic, preset, ema, dev, rep)
    solver = solver or ("gamma" if model.is_trajectory else "heun")
    if solver != "gamma" and gamma != 0.0:
        raise UserError(f"--gamma applies to gamma-sampling of a CTM; the {solver} solver is deterministic (drop --gamma)")
    check_out_kind(out, model.is_image, force)
    sched = parse_floats(sigmas, "--sigmas")
    if model.label_dim and class_label is not None and not 0 <= class_label < model.label_dim:
        raise UserError(f"--class {class_label} is outside 0..{model.label_dim - 1}")
    schedule = resolve_schedule(model, solver, nfe, steps, sched) if solver in ("gamma", "heun", "euler") else None
    t0 = time.time()
    options = dict(solver=solver, nfe=nfe, gamma=gamma, steps=steps, sigmas=sched, class_label=class_label)
    if ddp.is_distributed():
        gathered = distributed_generate(model, n, seed, batch, dev, **options)
        if not ddp.is_main():
            ddp.teardown()
            return
        x, labels = gathered.cpu(), None  # labels are not gathered across ranks
        ddp.teardown()
    else:
        xs, ys = [], []
        with rep.progress(n, "sample", unit="samples") as advance:
            for x, y in generate(model, n, seed=seed, batch=batch, device=dev, progress=advance, **options):
                xs.append(x.cpu())
                ys.append(None if y is None else y.cpu())
        x = torch.cat(xs)
        labels = None if ys[0] is None else torch.cat(ys)
    seconds = time.time() - t0
    info = write_output(x, labels, out, model.is_image, force)
    steps_taken = len(schedule) - 1
    nfe_used = steps_taken if solver == "gamma" else solver_nfe(solver, steps_taken, float(schedule[-1]) == 0.0)
    result = {**info, "n": n, "seed": seed, "solver": solver, "nfe": nfe_used, "gamma": gamma if solver == "gamma" else None,
              "schedule": [round(float(s), 6) for s in schedule], "checkpoint": str(model.path) if model.path else "analytic",
              "seconds": round(seconds, 3), "samples_per_second": round(n / max(seconds, 1e-9), 1)}
    if out == "-":
        rep.json_mode = False
        rep.log("sampled " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "schedule"))
        return
    rep.result(result, title="samples")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sample")


@app.command("sweep")
@handle_errors
def sweep_cmd(
    ckpt: Path | None = CkptOpt,
    run_dir: Path = typer.Option(Path("."), "--run-dir", help="Where to look for the newest checkpoint when --ckpt is omitted."),
    nfes: str = typer.Option("1,2,3,4,6,8", "--nfe", help="Comma-separated NFE values."),
    gammas: str = typer.Option("0,0.5,1", "--gamma", help="Comma-separated gamma values."),
    metric: str | None = typer.Option(None, "--metric", help="logp (Gaussian-mixture presets) | fd-pixels | fd (default: logp for toy GMM data, else fd-pixels)."),
    features: str | None = typer.Option(None, "--features", help="With --metric fd: inception or a TorchScript feature network."),
    ref: str | None = typer.Option(None, "--ref", help="Reference images/stats for fd metrics (default: the preset's data)."),
    n: int = typer.Option(4096, "--n", help="Samples per setting."),
    batch: int = typer.Option(1024, "--batch", help="Samples per forward pass."),
    seed: int = typer.Option(0, "--seed", help="First per-image seed (the same seeds for every setting)."),
    ema: str = typer.Option("ema", "--ema", help="Which weights of the checkpoint."),
    out: Path = typer.Option(Path("sweep.json"), "--out", "-o", help="Table as JSON; a plot is written beside it (.png)."),
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quality against NFE for several gamma values: a table and a plot (does quality hold up as NFE grows?)."""
    import json

    from ctmtool.checkpoint import atomic_write
    from ctmtool.quality import make_scorer
    from ctmtool.sweep import nfe_sweep
    from ctmtool.visual import line_chart, save_png

    rep = Reporter(json_out)
    check_output(out, force)
    plot = out.with_suffix(".png")
    check_output(plot, force)
    dev = select_device(device)
    model = resolve_model(ckpt, run_dir, False, None, ema, dev, rep)
    p = model.preset
    gmm = p.data.source == "toy" and p.data.toy == "gmm"
    metric = metric or ("logp" if gmm else "fd-pixels")
    reference = None
    if metric == "fd-pixels":
        from ctmtool.data import load_dataset, load_images

        reference = load_images(ref) if ref else load_dataset(p.data)
    name, score, base = make_scorer(metric, p, reference, features, ref, dev)
    nfe_list = [int(v) for v in parse_floats(nfes, "--nfe")]
    gamma_list = parse_floats(gammas, "--gamma")
    if any(v < 1 for v in nfe_list) or any(not 0 <= g <= 1 for g in gamma_list):
        raise UserError("--nfe values must be >= 1 and --gamma values in [0, 1]")
    rows = nfe_sweep(model, nfe_list, gamma_list, score, n, seed, batch, dev, progress=rep.log)
    result = {"checkpoint": str(model.path), "metric": name, "n": n, "seed": seed, **base, "rows": rows,
              "plot": str(plot)}
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    series: dict[str, list] = {}
    for r in rows:
        key = f"gamma {r['gamma']:g}" if r["gamma"] is not None else r["solver"]
        series.setdefault(key, []).append((r["nfe"], r["score"]))
    if model.is_trajectory:  # NFE 1 is the same for every gamma: show it on every line
        first = next((r for r in rows if r["nfe"] == min(nfe_list)), None)
        for key in series:
            if first and all(x != first["nfe"] for x, _ in series[key]):
                series[key].insert(0, (first["nfe"], first["score"]))
    save_png(line_chart(series, f"{Path(str(model.path)).name}: {name}", "NFE", "score"), plot)
    if json_out:
        rep.result({**result, "out": str(out)})
    else:
        for r in rows:
            print(f"{r['solver']:6s} nfe {r['nfe']:3d}  gamma {'' if r['gamma'] is None else r['gamma']:<4}  {r['score']:.5g}")
        print(f"wrote {out} and {plot}")
