"""`ctmtool fid`: FID (and KID) of images or of a checkpoint's samples against a reference; `fid stats`.

One command, two forms (a Typer group with a positional argument on its callback clashes with click's
sub-command parsing, so `stats` is recognised as the first argument instead; `fid stats --help` has its own help):

    ctmtool fid SAMPLES --ref REF [--features inception|FILE.pt] [--n N] [--kid] ...
    ctmtool fid stats DATA (-o STATS.npz | --name NAME) [--features ...]

To score a folder literally named `stats`, write `./stats`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ctmtool.cli.common import (
    DeviceOpt,
    EmaOpt,
    ForceOpt,
    JsonOpt,
    Reporter,
    at_least,
    check_output,
    handle_errors,
    select_device,
    subform_command,
)
from ctmtool.errors import UserError
from ctmtool.jobs.fid_run import CHECKPOINT_SUFFIX, is_checkpoint

PRESET = "Default for a checkpoint: its preset's [sample]"
STATS_HELP = ("Compute reference statistics (feature mean, covariance and, up to 50,000 images, the raw features) "
              "of DATA: real images (folder, .zip, .npz, image file) or a checkpoint (sampled in memory); write "
              "them to -o FILE.npz or, with --name NAME, to the cache as the named reference NAME.")
FEATURE_BATCH = 256  # images per feature batch when --batch is not given

STATS_OPTIONS = ("--out", "--name", "--no-features", "--features", "--n", "--batch", "--seed", "--device",
                 "--cache-dir", "--ema", "--force", "--json")


def _check_form(samples: str, data, ref, kid_flag: bool, out, name, no_features: bool, force: bool) -> str:
    """The path to read (SAMPLES, or DATA of `fid stats`), after refusing options of the other form."""
    if samples == "stats":
        if data is None:
            raise UserError("`ctmtool fid stats` needs DATA: a folder, .zip or .npz of real images (or a checkpoint)")
        if ref is not None or kid_flag:
            raise UserError("--ref and --kid belong to `ctmtool fid SAMPLES`, not to `fid stats`")
        if (out is None) == (name is None):
            raise UserError("`ctmtool fid stats` needs exactly one of -o FILE.npz or --name NAME")
        if name is not None:
            from ctmtool.metrics.fid import check_reference_name

            check_reference_name(name)
        if out is not None:
            check_output(out, force)
    else:
        if data is not None:
            raise UserError(f"unexpected second argument {data!r}; `ctmtool fid` takes one SAMPLES path "
                            "(use `ctmtool fid stats DATA` for reference statistics)")
        if out is not None or name is not None or no_features:
            raise UserError("-o/--out, --name and --no-features belong to `ctmtool fid stats`")
    target = data if samples == "stats" else samples
    if not Path(target).expanduser().exists():
        raise UserError(f"{target} does not exist; give a folder, .zip or .npz of images, an image file or a "
                        f"{CHECKPOINT_SUFFIX} checkpoint")
    return target


def _model(target: str, ema: str, dev, rep: Reporter):
    if not is_checkpoint(target):
        return None
    from ctmtool.jobs.run_dirs import open_model

    model, source = open_model(target, None, ema, dev)
    rep.log(f"using {source}: {model.kind}, preset {model.preset.name}, data {tuple(model.data_shape)}")
    return model


@handle_errors
def fid_cmd(
    samples: Annotated[str, typer.Argument(metavar="SAMPLES",
                                  help="Images (folder, .zip, .npz, image file) or a checkpoint (.safetensors, "
                                       "sampled in memory); or the word `stats` (see DATA).")],
    data: Annotated[str | None, typer.Argument(metavar="DATA",
                                      help="With `fid stats`: the real images (or a checkpoint) to compute "
                                           "reference statistics of.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", "-r",
                                   help="Reference: a name (e.g. cifar10-train: statistics in the cache, made with "
                                        "`fid stats --name`), a statistics .npz, or a folder/zip/npz of real images. "
                                        "Default for a checkpoint: its preset's fid.ref.")] = None,
    features: Annotated[str | None, typer.Option("--features", "-f",
                                        help="Feature network: `inception` (clean-fid), `inception-legacy` (clean-fid's "
                                             "legacy_tensorflow mode, as published FIDs; with EDM/ADM .npz "
                                             "references) or a TorchScript file (e.g. fd_a.pt), fed unresized. Default: inception, or the checkpoint "
                                             "preset's fid.features.")] = None,
    n: Annotated[int | None, typer.Option("--n", "-n",
                                 help="Number of images: samples generated from a checkpoint (default: preset fid.n), "
                                      "or a seeded random subset of the images (default: all).")] = None,
    kid_flag: Annotated[bool, typer.Option("--kid", help="Also compute KID (needs raw reference features).")] = False,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID: number of random subsets.")] = 100,
    kid_subset_size: Annotated[int, typer.Option("--kid-subset-size", help="KID: images per subset (at most n).")] = 1000,
    batch: Annotated[int | None, typer.Option("--batch", "-b", help="Images per generation and feature batch (default: 256; "
                     "generating on the CPU, a cache-sized batch and a traced solve, printed).")] = None,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option("--seed", help="First per-image seed (checkpoints), or the subset seed (--n on images).")] = 0,
    solver: Annotated[str | None, typer.Option("--solver", help=f"gamma (CTM), heun or euler (teachers). {PRESET}.")] = None,
    nfe: Annotated[int | None, typer.Option("--nfe", help=f"CTM network evaluations per sample (gamma-sampling). {PRESET}.")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help=f"CTM gamma: 0 deterministic, 1 CM-like. {PRESET}.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help=f"Grid points for heun/euler sampling. {PRESET}.")] = None,
    class_label: Annotated[int | None, typer.Option("--class", help="Class label for conditional models (default: random).")] = None,
    ema: EmaOpt = "ema",
    out: Annotated[str | None, typer.Option("--out", "-o", help="`fid stats`: the statistics file to write.")] = None,
    name: Annotated[str | None, typer.Option("--name",
                                    help="`fid stats`: save as the named reference NAME in the cache "
                                         "(<cache>/stats/NAME_<features>.npz).")] = None,
    no_features: Annotated[bool, typer.Option("--no-features",
                                     help="`fid stats`: store only mean and covariance (no raw features; KID then "
                                          "impossible). Raw features are stored by default up to 50,000 images.")] = False,
    cache: Annotated[str | None, typer.Option("--cache-dir",
                                     help="Cache for Inception weights and named statistics "
                                          "(default $CTMTOOL_CACHE or ~/.cache/ctmtool).")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Frechet distance (FID) of SAMPLES to a reference, or `fid stats DATA -o FILE` to save reference statistics.

    Samples from a checkpoint are generated in memory batch by batch (image i from seed + i) and go to the feature network as uint8, never written to disk. With Inception, images are resized as clean-fid's "clean" mode does; other feature networks see the images at their own size.
    """
    from ctmtool.jobs.fid_run import default_features, fid_plan
    from ctmtool.metrics.features import make_extractor

    rep = Reporter(json_out)
    at_least(2, n=n, kid_subset_size=kid_subset_size)
    at_least(1, batch=batch, kid_subsets=kid_subsets)
    target = _check_form(samples, data, ref, kid_flag, out, name, no_features, force)
    dev = select_device(device)
    model = _model(target, ema, dev, rep)
    plan = fid_plan(model, batch, solver=solver, nfe=nfe, gamma=gamma, steps=steps, class_label=class_label)
    extractor = make_extractor(default_features(features, model), dev, cache, progress=rep.progress)
    rep.log(f"feature network {extractor.name} (sha256 {extractor.short_sha}, mode {extractor.mode}) on {dev}")
    if samples == "stats":
        _stats(target, model, extractor, rep, n=n, seed=seed, batch=batch, device=dev, out=out, name=name,
               cache=cache, force=force, keep=not no_features, plan=plan)
        return
    _fid(target, model, extractor, rep, ref=ref, n=n, seed=seed, batch=batch, device=dev, cache=cache,
         kid_flag=kid_flag, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, plan=plan)


def _fid(samples: str, model, extractor, rep: Reporter, *, ref, n, seed, batch, device, cache, kid_flag,
         kid_subsets, kid_subset_size, plan) -> None:
    from ctmtool.jobs.fid_run import describe, reference, samples_stats
    from ctmtool.metrics.fid import fid_from_stats

    t0 = time.perf_counter()
    ref, ref_stats = reference(ref, model, extractor, device=device, cache=cache, batch=batch or FEATURE_BATCH,
                               kid=kid_flag, rep=rep)
    t1 = time.perf_counter()
    stats = samples_stats(samples, model, extractor, n=n, seed=seed, batch=batch, device=device,
                          keep_features=kid_flag, plan=plan, rep=rep)
    t2 = time.perf_counter()
    result = fid_from_stats(stats, ref_stats, kid_flag, kid_subsets, kid_subset_size, seed)
    result.update({"ref": ref, "samples": samples, "source": "checkpoint" if model is not None else "images",
                   **describe(plan), "device": str(device), "seconds": round(t2 - t1, 3),
                   "images_per_s": round(stats.n / max(t2 - t1, 1e-9), 1), "ref_seconds": round(t1 - t0, 3)})
    if "note" in result:
        rep.warn(result["note"])
    rep.result(result, title="FID")


def _stats(data: str, model, extractor, rep: Reporter, *, n, seed, batch, device, out, name, cache, force, keep,
           plan) -> None:
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
        rep.warn(f"{stats.n} images > {KEEP_FEATURES_MAX}: raw features not stored (KID against these statistics "
                 "is not possible)")
        stats.feats = None
    save_stats(stats, path)
    rep.log(f"wrote {path}")
    rep.result({"stats": str(path), "n": stats.n, "features": stats.features,
                "features_sha256": stats.features_sha256[:12], "mode": stats.mode,
                "dim": int(stats.mu.shape[0]), "raw_features": stats.feats is not None, "source": stats.source,
                "seed": seed, **describe(plan), "seconds": round(seconds, 3),
                "images_per_s": round(stats.n / max(seconds, 1e-9), 1)}, title="FID statistics")


def register(app: typer.Typer) -> None:
    cls = subform_command("stats", "DATA (-o FILE.npz | --name NAME) [OPTIONS]", STATS_HELP, STATS_OPTIONS)
    app.command("fid", cls=cls, short_help="FID/KID of images or a checkpoint's samples; `fid stats` for references.")(fid_cmd)
