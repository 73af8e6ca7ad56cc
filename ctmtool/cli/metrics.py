"""`ctmtool metrics`: FID, KID, Inception Score, precision/recall and sFID of images or a checkpoint's
samples.

    ctmtool metrics SAMPLES --ref REF [--features inception|FILE.pt] [--metrics fid,kid,is,pr,sfid] [-n N] ...
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ctmtool.cli.common import (
    CKPT_HELP,
    Command,
    DeviceOpt,
    EmaOpt,
    JsonOpt,
    Reporter,
    at_least,
    handle_errors,
    select_device,
)
from ctmtool.errors import UserError

# ctmtool.jobs.fid_run's; not imported here so that --help imports no torch
CHECKPOINT_SUFFIX = ".safetensors"


def is_checkpoint(path: str) -> bool:
    return str(path).lower().endswith(CHECKPOINT_SUFFIX)

PRESET = "Default for a checkpoint: its preset's [sample]"


def _batches(target: str, model, *, n, seed, batch, device, plan, rep):
    """(uint8 batches, count, name) of a checkpoint's samples or of images on disk."""
    from ctmtool.data.images import load_images
    from ctmtool.metrics.fid import dataset_batches, model_batches

    if model is not None:
        n = n or model.preset.fid.n
        return model_batches(model, n, plan, seed, device), n, str(model.path)
    ds = load_images(target)
    rep.log(f"read {len(ds)} images of {'x'.join(map(str, ds.shape))} from {target}")
    return dataset_batches(ds, batch, n, seed), min(n, len(ds)) if n else len(ds), ds.name


def _exists(path: str, what: str) -> str:
    if not Path(path).expanduser().exists():
        raise UserError(f"{what} {path} does not exist; give a folder, .zip or .npz of images, an image file "
                        f"or a {CHECKPOINT_SUFFIX} checkpoint")
    return path


@handle_errors
def metrics_cmd(
    samples: Annotated[str | None,
                       typer.Argument(metavar="SAMPLES", show_default=False, help="Images (folder, .zip, "
                                           ".npz, image file) or a checkpoint (.safetensors, sampled in "
                                           "memory).")] = None,
    ckpt: Annotated[Path | None,
                    typer.Option("--ckpt", metavar="FILE|RUN_DIR", help=CKPT_HELP + " Sampled in "
                                              "memory; instead of SAMPLES.")] = None,
    ref: Annotated[str | None,
                   typer.Option("--ref", "-r", help="Reference images (folder, .zip, .npz, image file) "
                                            "or a checkpoint; not needed for `--metrics is` alone.")] = None,
    metrics: Annotated[str | None,
                       typer.Option("--metrics", "-m", help="Comma-separated among fid, kid, is, pr "
                                                "(precision and recall), sfid. Default: all that the feature "
                                                "network supports.")] = None,
    features: Annotated[str | None, typer.Option("--features", "-f", help="`inception` (clean-fid resize), "
                                                 "`inception-legacy` or a TorchScript file whose classify(x) "
                                                 "gives logits (IS) and spatial(x) maps (sFID). Default: "
                                                 "inception, or the checkpoint preset's "
                                                 "fid.features.")] = None,
    n: Annotated[int | None, typer.Option("--num-samples", "-n", "--n", metavar="N",
                                          help="Samples generated from a checkpoint (default: preset "
                                          "fid.n), or a seeded random subset of SAMPLES images (default: "
                                          "all).")] = None,
    n_ref: Annotated[int | None,
                     typer.Option("--n-ref", help="A seeded random subset of the reference images "
                                              "(default: all; a checkpoint reference: its preset's "
                                              "fid.n).")] = None,
    k: Annotated[int, typer.Option("--k",
                                   help="Precision/recall: neighbours for the manifold radii (ADM: 3).")] = 3,
    is_split_size: Annotated[int, typer.Option("--is-split-size", help="Inception Score: images per split, "
                                               "averaged over splits (ADM: 5000).")] = 5000,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID: number of random subsets.")] = 100,
    kid_subset_size: Annotated[int, typer.Option("--kid-subset-size",
                                                 help="KID: images per subset (at most n).")] = 1000,
    batch: Annotated[int,
                     typer.Option("--batch", "-b", help="Images per generation and feature batch.")] = 256,
    seed: Annotated[int, typer.Option("--seed",
                                      help="First per-image seed (checkpoints), subset and KID seed.")] = 0,
    solver: Annotated[str | None,
                      typer.Option("--solver", help=f"gamma (CTM), heun or euler. {PRESET}.")] = None,
    nfe: Annotated[int | None,
                   typer.Option("--nfe", help=f"CTM network evaluations per sample. {PRESET}.")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help=f"CTM gamma. {PRESET}.")] = None,
    steps: Annotated[int | None,
                     typer.Option("--steps", help=f"Grid points for heun/euler. {PRESET}.")] = None,
    class_label: Annotated[int | None,
                           typer.Option("--class", help="Class label for conditional models.")] = None,
    ema: EmaOpt = "ema",
    device: DeviceOpt = "auto",
    cache: Annotated[str | None, typer.Option("--cache-dir", help="Cache for the Inception weights "
                                              "(default $CTMTOOL_CACHE or ~/.cache/ctmtool).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """FID, KID, Inception Score, precision/recall (k-NN manifolds) and sFID of SAMPLES against REF, with
    ADM's evaluator's conventions, in Inception's feature space or any TorchScript feature network's.

    Example: ctmtool metrics samples/ --ref real/ --features fd_a.pt --metrics fid,is,pr
    """
    from ctmtool.jobs.fid_run import default_features, describe, fid_plan
    from ctmtool.metrics.features import make_extractor
    from ctmtool.metrics.suite import REF_FREE, collect, evaluate, heads_for, metric_names, parse_metrics

    rep = Reporter(json_out)
    at_least(2, n=n, n_ref=n_ref, kid_subset_size=kid_subset_size)
    at_least(1, batch=batch, kid_subsets=kid_subsets, k=k, is_split_size=is_split_size)
    metric_names(metrics)  # names checked before any file is read
    if (samples is None) == (ckpt is None):
        raise UserError("give SAMPLES (images or a checkpoint) or --ckpt FILE|RUN_DIR, one of them")
    samples = str(ckpt) if ckpt is not None else samples
    _exists(samples, "SAMPLES")
    if ref is not None:
        _exists(ref, "--ref")
    dev = select_device(device)
    model = _open(samples, ema, dev, rep, is_model=ckpt is not None)
    plan = fid_plan(model, batch, solver=solver, nfe=nfe, gamma=gamma, steps=steps, class_label=class_label)
    extractor = make_extractor(default_features(features, model), dev, cache, progress=rep.progress)
    names = parse_metrics(metrics, extractor)
    if ref is None and set(names) - REF_FREE:
        raise UserError(f"{', '.join(m for m in names if m not in REF_FREE)} need reference images: give "
                        "--ref (or ask for `--metrics is` alone)")
    rep.log(f"feature network {extractor.name} (sha256 {extractor.short_sha}, mode {extractor.mode}) on "
            f"{dev}; metrics {','.join(names)}")
    t0 = time.perf_counter()
    ref_col = None
    if ref is not None and set(names) - REF_FREE:
        ref_heads = tuple(h for h in heads_for(m for m in names if m not in REF_FREE))
        ref_model = _open(ref, ema, dev, rep)
        it, total, name = _batches(ref, ref_model, n=n_ref, seed=seed, batch=batch, device=dev,
                                   plan=fid_plan(ref_model, batch), rep=rep)
        with rep.progress(total, "reference features", "images") as advance:
            ref_col = collect(it, extractor, ref_heads, advance, name)
    t1 = time.perf_counter()
    it, total, name = _batches(samples, model, n=n, seed=seed, batch=batch, device=dev, plan=plan, rep=rep)
    with rep.progress(total, "features", "images") as advance:
        col = collect(it, extractor, heads_for(names), advance, name)
    t2 = time.perf_counter()
    result = evaluate(col, ref_col, names, k=k, is_split_size=is_split_size, kid_subsets=kid_subsets,
                      kid_subset_size=kid_subset_size, seed=seed, device=dev)
    result.update({"metrics": list(names), "samples": samples, "ref": ref, "features": extractor.name,
                   "features_sha256": extractor.short_sha, "mode": extractor.mode, **describe(plan),
                   "seed": seed, "device": str(dev), "seconds": round(time.perf_counter() - t1, 3),
                   "ref_seconds": round(t1 - t0, 3), "images_per_s": round(col.n / max(t2 - t1, 1e-9), 1)})
    rep.result(result, title="metrics")


def _open(target: str, ema: str, dev, rep: Reporter, is_model: bool = False):
    if not (is_model or is_checkpoint(target)):
        return None
    from ctmtool.jobs.run_dirs import open_model

    model, source = open_model(target, None, ema, dev)
    rep.log(f"using {source}: {model.kind}, preset {model.preset.name}")
    return model


def register(app: typer.Typer) -> None:
    app.command("metrics", cls=Command,
                short_help="FID, KID, IS, precision/recall, sFID of images or a checkpoint's samples.")(
        metrics_cmd)
