"""`ctmtool sample`: gamma-sampling of a CTM, or Heun/Euler sampling of a teacher, to npz / png / folder /
stdout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import typer

from ctmtool.cli.common import (
    BatchOpt,
    CkptOpt,
    Command,
    CommandGroup,
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    NoLimitsOpt,
    OutOpt,
    Reporter,
    RunDirOpt,
    SeedOpt,
    at_least,
    check_output,
    handle_errors,
    limits,
    select_device,
)
from ctmtool.config import shown_value
from ctmtool.errors import UserError

app = typer.Typer(cls=CommandGroup, rich_markup_mode=None,
                  help="Draw samples from a CTM (gamma-sampling) or a teacher (Heun/Euler).",
                  short_help="Draw samples from a CTM (gamma-sampling) or a teacher (Heun/Euler).",
                  invoke_without_command=True, no_args_is_help=False)

PRESET_DEFAULT = " (default: the checkpoint preset's [sample] section)"


def parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = None
    if values is None or not all(math.isfinite(v) for v in values):
        raise UserError(f"{what} must be comma-separated finite numbers, e.g. 80,2.5,0.002; got "
                        f"{shown_value(text)}")
    return values


def _plot_text(model, res) -> dict:
    """Title and range of a scatter plot of samples: what, how many, how; the preset's range (plots
    compare)."""
    if model.is_image:
        return {}
    from ctmtool.jobs.plots import preset_view

    s = res.summary()
    how = (f"NFE {s['nfe']}, gamma {s['gamma']:g}" if s.get("solver") == "gamma"
           else f"{s.get('solver')}, NFE {s['nfe']}")
    name = Path(str(model.path)).name if model.path else "analytic teacher"
    return {"title": f"{len(res.x)} samples of {name} ({how})", "extent": preset_view(model.preset)[1]}


FastOpt = Annotated[bool, typer.Option("--fast/--eager",
                                       help="On the CPU: a cache-sized batch (unless --batch) and the "
                                        "solve traced once for many batches (within float32 rounding); the "
                                        "choice is printed.")]


def _sample(model, plan, dev, rep: Reporter, n, seed, fast: bool = True, batch_given: bool = True):
    """Samples of the model (None on torchrun ranks other than 0)."""
    from ctmtool.core import distributed as ddp
    from ctmtool.jobs.items import sample

    if not ddp.is_distributed():
        total = n if n is not None else model.preset.sample.n
        with rep.progress(total, "sample", unit="samples") as advance:
            return sample(model, plan, n=n, seed=seed, device=dev, progress=advance, fast=fast,
                          batch_given=batch_given, log=rep.log)
    try:
        return sample(model, plan, n=n, seed=seed, device=dev, distributed=True)
    finally:
        ddp.teardown()


@app.callback()
@handle_errors
def sample_cmd(
    ctx: typer.Context,
    ckpt: CkptOpt = None,
    run_dir: RunDirOpt = None,
    nfe: Annotated[int | None, typer.Option("--nfe", help="CTM network evaluations (gamma-sampling jumps)"
                                            + PRESET_DEFAULT + ".")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help="0 deterministic jumps ... 1 CM-style "
                                "multistep (Kim et al. 2024, Sec. 5).")] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", metavar="S0,S1,...", help="Explicit decreasing "
                                "schedule inside the model's range, e.g. 80,2.515,0.002 (instead of "
                                "--nfe/--steps).")] = None,
    solver: Annotated[Literal["gamma", "heun", "euler"] | None,
                      typer.Option("--solver", help="gamma (CTM) | heun | euler (teacher) (default: gamma "
                                                    "for a CTM, heun otherwise).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Grid points for heun/euler (18 -> 35 NFE with "
                                "Heun).")] = None,
    n: Annotated[int | None,
                 typer.Option("--num-samples", "-n", "--n", metavar="N", help="Number of samples (-n or "
                                             "--num-samples under torchrun, whose own parser takes --n)"
                              + PRESET_DEFAULT + ".")] = None,
    batch: BatchOpt = None,
    seed: SeedOpt = None,
    class_label: Annotated[int | None, typer.Option("--class", help="Class index for a conditional model "
                                "(default: random per image).")] = None,
    noise: Annotated[Literal["edm", "philox"] | None, typer.Option("--noise", help="Per-image noise stream: "
                                "edm (latents equal to EDM's generate.py) or philox (drawn on the device, "
                                "fast on a GPU)" + PRESET_DEFAULT + ".")] = None,
    ema: EmaOpt = "ema",
    analytic: Annotated[bool, typer.Option("--analytic", help="Sample the exact Gaussian-mixture teacher of "
                                "--preset.")] = False,
    preset: Annotated[str | None, typer.Option("--preset", "-p", metavar="NAME|FILE.toml",
                                               help="With --analytic: the Gaussian-mixture preset.")] = None,
    reject_with: Annotated[str | None, typer.Option("--reject-with", metavar="FILE.pt",
                                                    help="Classifier-rejection sampling: a TorchScript "
                                                    "file with classify(x) logits on uint8 images; draws (1 "
                                                    "+ --rejection-ratio) x n samples and keeps the n "
                                                    "best-scored.")] = None,
    rejection_ratio: Annotated[float,
                               typer.Option("--rejection-ratio", help="With --reject-with: extra fraction "
                                                   "drawn and rejected (the official script: 0.1 .. "
                                                   "1).")] = 0.2,
    fast: FastOpt = True,
    out: OutOpt = "samples.npz",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Sample a CTM with gamma-sampling, or a teacher with Heun/Euler; the same seed gives the same images at
    any --batch.

    Without --ckpt the newest checkpoint in --run-dir (default runs/toy/ctm) is used, and named on stderr.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ctmtool.core import distributed as ddp
    from ctmtool.jobs.items import join_process_group
    from ctmtool.jobs.outputs import check_out, write_items
    from ctmtool.jobs.plan import plan_sampling
    from ctmtool.jobs.rejection import draw_count
    from ctmtool.jobs.run_dirs import open_model

    rep = Reporter(json_out, data_on_stdout=out == "-")
    at_least(1, n=n)  # nfe, steps, batch: checked once, by plan_sampling
    limits(rep, no_limits, n=n, nfe=nfe, steps=steps)
    if out != "-" and Path(out).suffix in (".npz", ".png"):
        check_output(out, force)  # before loading anything
    dev = select_device(device)
    if ddp.env_world_size() > 1:  # under torchrun: each rank draws its own index range, rank 0 writes
        dev = join_process_group(dev)
    model, source = open_model(ckpt, run_dir, ema, dev, analytic=analytic, preset=preset)
    # before the output
    plan = plan_sampling(model, solver=solver, nfe=nfe, gamma=gamma, steps=steps, class_label=class_label,
                         sigmas=parse_floats(sigmas, "--sigmas"), noise=noise, batch=batch)
    check_out(out, model.is_image, force)
    rep.log(f"using {source}")
    classify = _classifier(reject_with, rejection_ratio, model, dev)
    wanted = n if n is not None else model.preset.sample.n
    if classify is not None:
        n = draw_count(wanted, rejection_ratio)
    res = _sample(model, plan, dev, rep, n, seed, fast, batch is not None)
    if res is None:
        return
    rejection = {}
    if classify is not None:
        res, rejection = _reject(res, classify, rejection_ratio, wanted, reject_with, rep)
    info = write_items(res.x, out, model.is_image, labels=res.labels, **_plot_text(model, res))
    result = {**info, **res.summary(), **rejection,
              "checkpoint": str(model.path) if model.path else "analytic"}
    rep.result(result, title="samples")


def _classifier(path: str | None, ratio: float, model, dev):
    """The classify(x) method of a TorchScript classifier for --reject-with, or None."""
    if path is None:
        return None
    from ctmtool.metrics.features import make_extractor

    if ratio < 0:
        raise UserError(f"--rejection-ratio must be >= 0 (got {ratio})")
    if not model.is_image:
        raise UserError("--reject-with scores images with a classifier; this model makes points")
    if path.lower().startswith("inception"):
        raise UserError("--reject-with takes a TorchScript classifier file (classify(x) logits), not "
                        "Inception")
    ex = make_extractor(path, dev)
    if not ex.has_head("logits"):
        raise UserError(f"--reject-with {path}: {ex.missing_head('logits')}")
    return lambda x: ex.heads(x, ("logits",))["logits"]


def _reject(res, classify, ratio: float, wanted: int, path: str, rep: Reporter):
    """The samples that survive classifier rejection, and what the result reports about it."""
    import dataclasses

    from ctmtool.jobs.rejection import classifier_scores, keep_best

    scores, classes = classifier_scores(res.x, res.labels, classify)
    kept = keep_best(scores, classes, ratio, wanted)
    rep.log(f"classifier rejection: kept {len(kept)} of {len(res.x)} samples (mean log p "
            f"{float(scores.mean()):.4g} -> {float(scores[kept].mean()):.4g})")
    res = dataclasses.replace(res, x=res.x[kept], labels=None if res.labels is None else res.labels[kept],
                              n=len(kept))
    return res, {"rejected_with": path, "rejection_ratio": ratio, "drawn": len(scores),
                 "mean_logp_drawn": round(float(scores.mean()), 6),
                 "mean_logp_kept": round(float(scores[kept].mean()), 6)}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sample")


@app.command("sweep", cls=Command)
@handle_errors
def sweep_cmd(
    ckpt: CkptOpt = None,
    run_dir: RunDirOpt = None,
    nfes: Annotated[str, typer.Option("--nfe", metavar="N,N,...",
                                      help="Comma-separated NFE values.")] = "1,2,3,4,6,8",
    gammas: Annotated[str, typer.Option("--gamma", metavar="G,G,...",
                                        help="Comma-separated gamma values.")] = "0,0.5,1",
    metric: Annotated[Literal["logp", "fd-pixels", "fd"] | None,
                      typer.Option("--metric", help="logp (Gaussian-mixture presets) | fd-pixels | fd "
                                                    "(default: logp for toy GMM data, else "
                                                    "fd-pixels).")] = None,
    features: Annotated[str | None,
                        typer.Option("--features", metavar="inception|FILE.pt",
                                     help="With --metric fd: inception or a TorchScript feature "
                                          "network.")] = None,
    ref: Annotated[str | None,
                   typer.Option("--ref", metavar="IMAGES|STATS.npz", help="Reference images/stats for fd "
                                               "metrics (default: the preset's data).")] = None,
    n: Annotated[int,
                 typer.Option("--num-samples", "-n", "--n", metavar="N", help="Samples per setting.")] = 4096,
    batch: Annotated[int | None,
                     typer.Option("--batch", "-b", metavar="N", help="Samples per forward pass (default: "
                     "the preset's; on the CPU a cache-sized batch, see --fast).")] = None,
    seed: Annotated[int, typer.Option("--seed",
                                      help="First per-image seed (the same seeds for every setting).")] = 0,
    ema: EmaOpt = "ema",
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.json", help="Table as JSON; a plot is "
                                "written beside it (.png).")] = Path("sweep.json"),
    search_nfe2: Annotated[bool, typer.Option("--search-nfe2",
                                              help="Instead of the table: ternary search of NFE 2's "
                                              "intermediate level over a --search-steps grid (the CTM code's "
                                              "ternary_search.py), with the first --gamma value.")] = False,
    search_steps: Annotated[int,
                            typer.Option("--search-steps", help="--search-nfe2: levels of the grid searched "
                                              "(the official script: 40).")] = 40,
    fast: FastOpt = True,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    no_limits: NoLimitsOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quality against NFE for several gamma values: a table and a plot (does quality hold up as NFE grows?);
    or, with --search-nfe2, the best intermediate level for two-step sampling.

    Without --ckpt the newest checkpoint in --run-dir (default runs/toy/ctm) is used."""
    from ctmtool.jobs.items import check_memory
    from ctmtool.jobs.run_dirs import open_model
    from ctmtool.jobs.sweep import nfe2_job, sweep_job

    rep = Reporter(json_out)
    at_least(1, n=n, batch=batch)
    nfe_list = [int(v) for v in parse_floats(nfes, "--nfe")]
    gamma_list = parse_floats(gammas, "--gamma")
    limits(rep, no_limits, n=n, nfe=max(nfe_list, default=None))
    at_least(3, search_steps=search_steps)
    check_output(out, force)
    plot = out.with_suffix(".png")
    if plot == out:
        raise UserError(f"--out {out} is where the plot goes (the table's name with .png); give the table a "
                        ".json name")
    check_output(plot, force)
    dev = select_device(device)
    model, source = open_model(ckpt, run_dir, ema, dev)
    check_memory(n, model.data_shape)
    rep.log(f"using {source}")
    if search_nfe2:
        result = nfe2_job(model, gamma_list[0], search_steps, metric=metric, features=features, ref=ref, n=n,
                          seed=seed, batch=batch, device=dev, out=out, plot=plot, progress=rep.log)
        if json_out:
            rep.result({**result, "out": str(out)})
        else:
            for e in result["evaluated"]:
                print(f"index {e['index']:3d}  level {e['level']:.5g}  {e['score']:.5g}")
            print(f"best: index {result['best_index']} (level {result['best_level']:.5g}), "
                  f"score {result['best_score']:.5g}")
            print(f"wrote {out} and {plot}")
        return
    result = sweep_job(model, nfe_list, gamma_list, metric=metric, features=features, ref=ref, n=n, seed=seed,
                       batch=batch, device=dev, out=out, plot=plot, progress=rep.log, fast=fast)
    rows = result["rows"]
    if json_out:
        rep.result({**result, "out": str(out)})
    else:
        import sys

        if sys.stdout.isatty():
            for r in rows:
                print(f"{r['solver']:6s} nfe {r['nfe']:3d}  gamma "
                      f"{'' if r['gamma'] is None else r['gamma']:<4}  {r['score']:.5g}")
        else:  # a plain tab-separated table for scripts
            print("solver\tnfe\tgamma\tscore")
            for r in rows:
                print(f"{r['solver']}\t{r['nfe']}\t{'' if r['gamma'] is None else r['gamma']}\t"
                      f"{r['score']:.6g}")
        rep.log(f"wrote {out} and {plot}")


