"""`ctmtool fid`: FID (and KID) of images or of a checkpoint's samples against a reference; `fid stats`.

One command, two forms (a Typer group with a positional argument on its callback clashes with click's
sub-command parsing, so `stats` is recognised as the first argument instead):

    ctmtool fid SAMPLES --ref REF [--features inception|FILE.pt] [--n N] [--kid] ...
    ctmtool fid stats DATA (-o STATS.npz | --name NAME) [--features ...]

To score a folder literally named `stats`, write `./stats`.
"""

from __future__ import annotations

import time
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

CHECKPOINT_SUFFIX = ".safetensors"


def _is_checkpoint(path: str) -> bool:
    return path.lower().endswith(CHECKPOINT_SUFFIX)


def _default_features(features: str | None, model) -> str:
    """--features, else the checkpoint preset's [fid] features, else Inception."""
    if features:
        return features
    if model is None:
        return "inception"
    want = model.preset.fid.features
    if want.lower() not in ("inception", "inception-legacy") and not Path(want).expanduser().is_file():
        raise UserError(f"the checkpoint's preset names feature network {want!r}, which is not a file here; "
                        "give its path with --features FILE.pt (or --features inception)")
    return want


def _samples_stats(samples: str, model, extractor, rep: Reporter, *, n: int | None, seed: int, batch: int, device,
                   keep_features: bool, sampling: dict):
    """Statistics of SAMPLES: generated in memory from a checkpoint, or of a set of images."""
    from ctmtool.data.images import load_images
    from ctmtool.metrics.fid import compute_stats, dataset_batches, model_batches

    if model is not None:
        n = n or model.preset.fid.n
        with rep.progress(n, "generating + features", "images") as advance:
            return compute_stats(model_batches(model, n, seed, batch, device, **sampling), extractor, device,
                                 keep_features, advance, samples)
    rep.log(f"reading images from {samples}")
    t0 = time.perf_counter()
    ds = load_images(samples)
    rep.log(f"read {len(ds)} images of {'x'.join(map(str, ds.shape))} in {time.perf_counter() - t0:.1f} s")
    total = min(n, len(ds)) if n else len(ds)
    with rep.progress(total, "features", "images") as advance:
        return compute_stats(dataset_batches(ds, batch, n, seed), extractor, device, keep_features, advance, ds.name)


def _sampling(model, solver: str | None, nfe: int, gamma: float, steps: int, class_label: int | None) -> dict:
    if model is None:
        return {}
    solver = solver or ("gamma" if model.is_trajectory else "heun")
    out = {"solver": solver, "nfe": nfe, "gamma": gamma} if solver == "gamma" else {"solver": solver, "steps": steps}
    if class_label is not None:
        out["class_label"] = class_label
    return out


@handle_errors
def fid_cmd(
    samples: str = typer.Argument(..., metavar="SAMPLES",
                                  help="Images (folder, .zip, .npz, image file) or a checkpoint (.safetensors, "
                                       "sampled in memory); or the word `stats` (see DATA)."),
    data: str | None = typer.Argument(None, metavar="[DATA]",
                                      help="With `fid stats`: the real images (or a checkpoint) to compute "
                                           "reference statistics of."),
    ref: str | None = typer.Option(None, "--ref", "-r",
                                   help="Reference: a name (e.g. cifar10-train: statistics in the cache, made with "
                                        "`fid stats --name`), a statistics .npz, or a folder/zip/npz of real images. "
                                        "Default for a checkpoint: its preset's fid.ref."),
    features: str | None = typer.Option(None, "--features", "-f",
                                        help="Feature network: `inception` (clean-fid), `inception-legacy` (clean-fid's "
                                             "legacy_tensorflow mode, as published FIDs; with EDM/ADM .npz references) or a TorchScript file "
                                             "(e.g. fd_a.pt), fed unresized. Default: inception, or the checkpoint "
                                             "preset's fid.features."),
    n: int | None = typer.Option(None, "--n", "-n", min=2,
                                 help="Number of images: samples generated from a checkpoint (default: preset fid.n), "
                                      "or a seeded random subset of the images (default: all)."),
    kid_flag: bool = typer.Option(False, "--kid", help="Also compute KID (needs raw reference features)."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1, help="KID: number of random subsets."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", min=2, help="KID: images per subset (at most n)."),
    batch: int = typer.Option(256, "--batch", "-b", min=1, help="Images per generation and feature batch."),
    device: DeviceOpt = "auto",
    seed: int = typer.Option(0, "--seed", help="First per-image seed (checkpoints), or the subset seed (--n on images)."),
    solver: str | None = typer.Option(None, "--solver", help="gamma (CTM, default), heun or euler (teachers, default heun)."),
    nfe: int = typer.Option(1, "--nfe", min=1, help="CTM network evaluations per sample (gamma-sampling)."),
    gamma: float = typer.Option(0.0, "--gamma", min=0.0, max=1.0, help="CTM gamma: 0 deterministic, 1 CM-like."),
    steps: int = typer.Option(18, "--steps", min=1, help="Grid points for heun/euler sampling."),
    class_label: int | None = typer.Option(None, "--class", min=0, help="Class label for conditional models."),
    which: str = typer.Option("ema", "--which", help="Checkpoint weights to sample (ema, net, ema_0.9999, ...)."),
    output: str | None = typer.Option(None, "--output", "-o", help="`fid stats`: the statistics file to write."),
    name: str | None = typer.Option(None, "--name",
                                    help="`fid stats`: save as the named reference NAME in the cache "
                                         "(<cache>/stats/NAME_<features>.npz)."),
    no_features: bool = typer.Option(False, "--no-features",
                                     help="`fid stats`: store only mean and covariance (no raw features; KID then "
                                          "impossible). Raw features are stored by default up to 50,000 images."),
    cache: str | None = typer.Option(None, "--cache-dir",
                                     help="Cache for Inception weights and named statistics "
                                          "(default $CTMTOOL_CACHE or ~/.cache/ctmtool)."),
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Frechet distance (FID) of SAMPLES to a reference, or `fid stats DATA -o FILE` to save reference statistics.

    Samples from a checkpoint are generated in memory batch by batch (image i from seed + i) and go to the feature network as uint8, never written to disk. With Inception, images are resized as clean-fid's "clean" mode does; other feature networks see the images at their own size.
    """
    rep = Reporter(json_out)
    if samples == "stats":
        if data is None:
            raise UserError("`ctmtool fid stats` needs DATA: a folder, .zip or .npz of real images (or a checkpoint)")
        if ref is not None or kid_flag:
            raise UserError("--ref and --kid belong to `ctmtool fid SAMPLES`, not to `fid stats`")
        if (output is None) == (name is None):
            raise UserError("`ctmtool fid stats` needs exactly one of -o FILE.npz or --name NAME")
        if output is not None:
            check_output(output, force)
    else:
        if data is not None:
            raise UserError(f"unexpected second argument {data!r}; `ctmtool fid` takes one SAMPLES path "
                            "(use `ctmtool fid stats DATA` for reference statistics)")
        if output is not None or name is not None or no_features:
            raise UserError("-o, --name and --no-features belong to `ctmtool fid stats`")
    from ctmtool.metrics.features import make_extractor

    target = data if samples == "stats" else samples
    if not _is_checkpoint(target) and not Path(target).expanduser().exists():
        raise UserError(f"{target} does not exist; give a folder, .zip or .npz of images, an image file or a "
                        f"{CHECKPOINT_SUFFIX} checkpoint")
    dev = select_device(device)
    model = None
    if _is_checkpoint(target):
        from ctmtool.models import load_model

        model = load_model(target, which, dev)
        rep.log(f"loaded {model.kind} checkpoint {target} ({model.preset.name}, data {tuple(model.data_shape)})")
    sampling = _sampling(model, solver, nfe, gamma, steps, class_label)
    extractor = make_extractor(_default_features(features, model), dev, cache, progress=rep.progress)
    rep.log(f"feature network {extractor.name} (sha256 {extractor.short_sha}, mode {extractor.mode}) on {dev}")
    if samples == "stats":
        _stats(target, model, extractor, rep, n=n, seed=seed, batch=batch, device=dev, output=output, name=name,
               cache=cache, force=force, keep=not no_features, sampling=sampling)
        return
    _fid(target, model, extractor, rep, ref=ref, n=n, seed=seed, batch=batch, device=dev, cache=cache,
         kid_flag=kid_flag, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, sampling=sampling)


def _fid(samples: str, model, extractor, rep: Reporter, *, ref, n, seed, batch, device, cache, kid_flag,
         kid_subsets, kid_subset_size, sampling) -> None:
    from ctmtool.data.images import load_images
    from ctmtool.metrics.fid import (
        compute_stats,
        dataset_batches,
        fid_from_stats,
        is_stats_file,
        reference_stats,
    )

    ref = ref or (model.preset.fid.ref if model is not None else None)
    if ref is None:
        raise UserError("--ref is missing: give a named reference (e.g. cifar10-train), a statistics .npz or a "
                        "folder/zip/npz of real images")
    t0 = time.perf_counter()
    p = Path(ref).expanduser()
    if p.exists() and not (p.is_file() and p.suffix.lower() == ".npz" and is_stats_file(p)):
        rep.log(f"computing reference statistics of {p} (save them once with `ctmtool fid stats {ref} -o FILE.npz`)")
        ds = load_images(p)
        rep.log(f"read {len(ds)} reference images of {'x'.join(map(str, ds.shape))}")
        with rep.progress(len(ds), "reference features", "images") as advance:
            ref_stats = compute_stats(dataset_batches(ds, batch), extractor, device, kid_flag, advance, str(p))
    else:
        ref_stats = reference_stats(ref, extractor, device, cache)
    if kid_flag and ref_stats.feats is None:
        raise UserError(f"--kid needs raw reference features but {ref} holds only mean and covariance; recompute it "
                        "with `ctmtool fid stats` (without --no-features) or leave out --kid")
    t1 = time.perf_counter()
    stats = _samples_stats(samples, model, extractor, rep, n=n, seed=seed, batch=batch, device=device,
                           keep_features=kid_flag, sampling=sampling)
    t2 = time.perf_counter()
    out = fid_from_stats(stats, ref_stats, kid_flag, kid_subsets, kid_subset_size, seed)
    out.update({"ref": ref, "samples": samples, "source": "checkpoint" if model is not None else "images",
                **sampling, "device": str(device), "seconds": round(t2 - t1, 3),
                "images_per_s": round(stats.n / max(t2 - t1, 1e-9), 1), "ref_seconds": round(t1 - t0, 3)})
    if "note" in out:
        rep.warn(out["note"])
    rep.result(out, title="FID")


def _stats(data: str, model, extractor, rep: Reporter, *, n, seed, batch, device, output, name, cache, force, keep,
           sampling) -> None:
    from ctmtool.metrics.fid import KEEP_FEATURES_MAX, named_stats_path, save_stats

    path = Path(output) if output is not None else named_stats_path(name, extractor, cache)
    if output is None:
        check_output(path, force)
    t0 = time.perf_counter()
    stats = _samples_stats(data, model, extractor, rep, n=n, seed=seed, batch=batch, device=device,
                           keep_features=keep, sampling=sampling)
    seconds = time.perf_counter() - t0
    if stats.feats is not None and stats.n > KEEP_FEATURES_MAX:
        rep.warn(f"{stats.n} images > {KEEP_FEATURES_MAX}: raw features not stored (KID against these statistics "
                 "is not possible)")
        stats.feats = None
    save_stats(stats, path)
    rep.log(f"wrote {path}")
    rep.result({"stats": str(path), "n": stats.n, "features": stats.features, "features_sha256": stats.features_sha256[:12], "mode": stats.mode,
                "dim": int(stats.mu.shape[0]), "raw_features": stats.feats is not None, "source": stats.source,
                "seed": seed, **sampling, "seconds": round(seconds, 3),
                "images_per_s": round(stats.n / max(seconds, 1e-9), 1)}, title="FID statistics")


def register(app: typer.Typer) -> None:
    app.command("fid")(fid_cmd)
