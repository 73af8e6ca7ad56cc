"""`ctmtool fid`: FID (and KID) of images or of a checkpoint's samples against a reference; `fid stats`.

    ctmtool fid SAMPLES --ref REF [--features inception|FILE.pt] [-n N] [--kid] ...
    ctmtool fid stats DATA (-o STATS.npz | --name NAME) [--features ...]

`fid` is a group whose sub-command is `stats`; any other first argument is SAMPLES of the default command
(so a folder literally named `stats` is written `./stats`). SAMPLES or DATA `-` reads .npz bytes on stdin.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from ctmtool.cli.common import (
    CKPT_HELP,
    CkptOrData,
    DefaultCommand,
    DefaultGroup,
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    Reporter,
    SeedOpt,
    at_least,
    check_output,
    handle_errors,
    select_device,
)
from ctmtool.errors import UserError
from ctmtool.jobs.streams import STDIO, input_path

PRESET = "Default for a checkpoint: its preset's [sample]"
CHECKPOINT_SUFFIX = ".safetensors"
FEATURE_BATCH = 256  # images per feature batch when --batch is not given

app = typer.Typer(cls=DefaultGroup, rich_markup_mode=None, no_args_is_help=False,
                  short_help="FID/KID of images or a checkpoint's samples; `fid stats` for references.")

ModelOpt = Annotated[Path | None, typer.Option("--ckpt", metavar="FILE|RUN_DIR",
                                               help=CKPT_HELP
                                               + " Sampled in memory; instead of the argument.")]
FeaturesOpt = Annotated[str | None, typer.Option(
    "--features", "-f", metavar="inception|inception-legacy|FILE.pt",
    help="Feature network: `inception` (clean-fid), `inception-legacy` (clean-fid's legacy_tensorflow mode, "
         "as published FIDs; with EDM/ADM .npz references) or a TorchScript file (e.g. fd_a.pt), fed "
         "unresized. Default: inception, or the checkpoint preset's fid.features.")]
FidNumOpt = Annotated[int | None, typer.Option(
    "--num-samples", "-n", "--n", metavar="N",
    help="Number of images: samples generated from a checkpoint (default: preset fid.n), or a seeded random "
         "subset of the images (default: all).")]
SolverOpt = Annotated[Literal["gamma", "heun", "euler"] | None, typer.Option("--solver",
                                               help=f"gamma (CTM), heun or euler (teachers). {PRESET}.")]
NfeOpt = Annotated[int | None, typer.Option("--nfe", help="CTM network evaluations per sample "
                            f"(gamma-sampling). {PRESET}.")]
GammaOpt = Annotated[float | None,
                     typer.Option("--gamma", help=f"CTM gamma: 0 deterministic, 1 CM-like. {PRESET}.")]
StepsOpt = Annotated[int | None,
                     typer.Option("--steps", help=f"Grid points for heun/euler sampling. {PRESET}.")]
ClassOpt = Annotated[int | None,
                     typer.Option("--class", help="Class label for conditional models (default: random).")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache-dir", metavar="DIR", help="Cache for Inception weights and named statistics "
                                       "(default $CTMTOOL_CACHE or ~/.cache/ctmtool).")]


FidBatchOpt = Annotated[int | None,
                        typer.Option("--batch", "-b", metavar="N", help="Images per generation and feature "
                        "batch (default: 256; generating on the CPU, a cache-sized batch and a traced solve, "
                        "printed).")]

def _target(given: str | None, ckpt, what: str) -> str:
    """SAMPLES / DATA, or --ckpt (a checkpoint file or a run directory): exactly one of them."""
    if (given is None) == (ckpt is None):
        raise UserError(f"give {what} (images, - for stdin, or a checkpoint) or --ckpt FILE|RUN_DIR, one of "
                        "them")
    return str(ckpt) if ckpt is not None else given


def _exists(target: str) -> None:
    if target != STDIO and not Path(target).expanduser().exists():
        raise UserError(f"{target} does not exist; give a folder, .zip or .npz of images, an image file, a "
                        f"{CHECKPOINT_SUFFIX} checkpoint or a run directory, or - for .npz bytes on stdin")


def _model(target: str, ema: str, dev, rep: Reporter, is_model: bool = False):
    from ctmtool.jobs.fid_run import is_checkpoint

    if not (is_model or is_checkpoint(target) or _is_run_dir(target)):
        return None
    from ctmtool.jobs.run_dirs import open_model

    model, source = open_model(target, None, ema, dev)
    rep.log(f"using {source}: {model.kind}, preset {model.preset.name}, data {tuple(model.data_shape)}")
    return model


def _is_run_dir(target: str) -> bool:
    """A folder holding checkpoints (and no images): a run directory, read as its newest checkpoint."""
    p = Path(target)
    return p.is_dir() and any(p.glob(f"*{CHECKPOINT_SUFFIX}"))


def _setup(target, ema, device, features, cache, rep, batch, solver, nfe, gamma, steps, class_label,
           is_model=False):
    from ctmtool.jobs.fid_run import default_features, fid_plan
    from ctmtool.metrics.features import make_extractor

    dev = select_device(device)
    model = _model(target, ema, dev, rep, is_model)
    plan = fid_plan(model, batch, solver=solver, nfe=nfe, gamma=gamma, steps=steps, class_label=class_label)
    extractor = make_extractor(default_features(features, model), dev, cache, progress=rep.progress)
    rep.log(f"feature network {extractor.name} (sha256 {extractor.short_sha}, mode {extractor.mode}) on "
            f"{dev}")
    return dev, model, plan, extractor


@app.command("run", cls=DefaultCommand, hidden=True)
@handle_errors
def fid_cmd(
    samples: Annotated[str | None, typer.Argument(metavar="SAMPLES", show_default=False,
                                                  help=CkptOrData + " (sampled in memory).")] = None,
    ckpt: ModelOpt = None,
    ref: Annotated[str | None, typer.Option("--ref", "-r", metavar="NAME|STATS.npz|IMAGES",
                                   help="Reference: a name (e.g. cifar10-train: statistics in the cache, "
                                        "made with `fid stats --name`), a statistics .npz, or a "
                                        "folder/zip/npz of real images. Default for a checkpoint: its "
                                        "preset's fid.ref.")] = None,
    features: FeaturesOpt = None,
    n: FidNumOpt = None,
    kid_flag: Annotated[bool, typer.Option("--kid",
                                           help="Also compute KID (needs raw reference features).")] = False,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID: number of random subsets.")] = 100,
    kid_subset_size: Annotated[int, typer.Option("--kid-subset-size",
                                                 help="KID: images per subset (at most n).")] = 1000,
    batch: FidBatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    solver: SolverOpt = None,
    nfe: NfeOpt = None,
    gamma: GammaOpt = None,
    steps: StepsOpt = None,
    class_label: ClassOpt = None,
    ema: EmaOpt = "ema",
    cache: CacheOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Frechet distance (FID) of SAMPLES to a reference; `ctmtool fid stats DATA -o FILE` saves reference
    statistics.

    Samples from a checkpoint are generated in memory batch by batch (image i from seed + i) and go to the
    feature network as uint8, never written to disk. With Inception, images are resized as clean-fid's "clean"
    mode does; other feature networks see the images at their own size.
    """
    rep = Reporter(json_out)
    at_least(2, n=n, kid_subset_size=kid_subset_size)
    at_least(1, batch=batch, kid_subsets=kid_subsets)
    samples = _target(samples, ckpt, "SAMPLES")
    _exists(samples)
    with input_path(samples) as staged:
        dev, model, plan, extractor = _setup(str(staged), ema, device, features, cache, rep, batch, solver,
                                             nfe, gamma, steps, class_label, is_model=ckpt is not None)
        _fid(str(staged), samples, model, extractor, rep, ref=ref, n=n, seed=seed, batch=batch, device=dev,
             cache=cache, kid_flag=kid_flag, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
             plan=plan)


@app.command("stats", cls=DefaultCommand,
             short_help="Save reference statistics of real images (or a checkpoint).")
@handle_errors
def stats_cmd(
    data: Annotated[str | None, typer.Argument(metavar="DATA", show_default=False,
                                               help=CkptOrData + " (sampled in memory).")] = None,
    ckpt: ModelOpt = None,
    out: Annotated[str | None, typer.Option("--out", "-o", metavar="FILE.npz",
                                            help="The statistics file to write.")] = None,
    name: Annotated[str | None, typer.Option("--name", metavar="NAME",
                                    help="Save as the named reference NAME in the cache "
                                         "(<cache>/stats/NAME_<features>.npz).")] = None,
    no_features: Annotated[bool, typer.Option("--no-features",
                                     help="Store only mean and covariance (no raw features; KID then "
                                          "impossible). Raw features are stored by default up to 50,000 "
                                          "images.")] = False,
    features: FeaturesOpt = None,
    n: FidNumOpt = None,
    batch: FidBatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    solver: SolverOpt = None,
    nfe: NfeOpt = None,
    gamma: GammaOpt = None,
    steps: StepsOpt = None,
    class_label: ClassOpt = None,
    ema: EmaOpt = "ema",
    cache: CacheOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compute reference statistics (feature mean, covariance and, up to 50,000 images, the raw features) of
    DATA: real images (folder, .zip, .npz, image file, - for stdin) or a checkpoint (sampled in memory); write
    them to -o FILE.npz or, with --name NAME, to the cache as the named reference NAME."""
    rep = Reporter(json_out)
    at_least(2, n=n)
    at_least(1, batch=batch)
    data = _target(data, ckpt, "DATA")
    if (out is None) == (name is None):
        raise UserError("`ctmtool fid stats` needs exactly one of -o FILE.npz or --name NAME")
    if name is not None:
        from ctmtool.metrics.fid import check_reference_name

        check_reference_name(name)
    if out is not None:
        check_output(out, force)
    _exists(data)
    with input_path(data) as staged:
        dev, model, plan, extractor = _setup(str(staged), ema, device, features, cache, rep, batch, solver,
                                             nfe, gamma, steps, class_label, is_model=ckpt is not None)
        _stats(str(staged), model, extractor, rep, n=n, seed=seed, batch=batch, device=dev, out=out,
               name=name, cache=cache, force=force, keep=not no_features, plan=plan)


def _fid(samples: str, shown: str, model, extractor, rep: Reporter, *, ref, n, seed, batch, device, cache,
         kid_flag, kid_subsets, kid_subset_size, plan) -> None:
    from ctmtool.jobs.fid_run import describe, reference, samples_stats
    from ctmtool.metrics.fid import fid_from_stats

    t0 = time.perf_counter()
    ref, ref_stats = reference(ref, model, extractor, device=device, cache=cache,
                               batch=batch or FEATURE_BATCH, kid=kid_flag, rep=rep)
    t1 = time.perf_counter()
    stats = samples_stats(samples, model, extractor, n=n, seed=seed, batch=batch, device=device,
                          keep_features=kid_flag, plan=plan, rep=rep)
    t2 = time.perf_counter()
    result = fid_from_stats(stats, ref_stats, kid_flag, kid_subsets, kid_subset_size, seed)
    result.update({"ref": ref, "samples": shown, "source": "checkpoint" if model is not None else "images",
                   **describe(plan), "device": str(device), "seconds": round(t2 - t1, 3),
                   "images_per_s": round(stats.n / max(t2 - t1, 1e-9), 1), "ref_seconds": round(t1 - t0, 3)})
    if "note" in result:
        rep.warn(result["note"])
    rep.result(result, title="FID")


def _stats(data: str, model, extractor, rep: Reporter, *, n, seed, batch, device, out, name, cache, force,
           keep, plan) -> None:
    from ctmtool.jobs.fid_run import describe, samples_stats
    from ctmtool.metrics.fid import KEEP_FEATURES_MAX, named_stats_path, save_stats

    path = Path(out) if out is not None else named_stats_path(name, extractor, cache)
    if out is None:
        check_output(path, force)
    t0 = time.perf_counter()
    stats = samples_stats(data, model, extractor, n=n, seed=seed, batch=batch, device=device,
                          keep_features=keep, plan=plan, rep=rep)
    seconds = time.perf_counter() - t0
    if stats.feats is not None and stats.n > KEEP_FEATURES_MAX:
        rep.warn(f"{stats.n} images > {KEEP_FEATURES_MAX}: raw features not stored (KID against these "
                 "statistics is not possible)")
        stats.feats = None
    save_stats(stats, path)
    rep.log(f"wrote {path}")
    rep.result({"stats": str(path), "n": stats.n, "features": stats.features,
                "features_sha256": stats.features_sha256[:12], "mode": stats.mode,
                "dim": int(stats.mu.shape[0]), "raw_features": stats.feats is not None,
                "source": stats.source, "seed": seed, **describe(plan), "seconds": round(seconds, 3),
                "images_per_s": round(stats.n / max(seconds, 1e-9), 1)}, title="FID statistics")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="fid")
