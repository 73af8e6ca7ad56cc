"""FID of a set of images or of a checkpoint's samples, and reference statistics, as library calls
(Heusel et al. 2017; clean-fid's "clean" resizing for Inception). A checkpoint's preset supplies the defaults:
`[fid]` for features, reference and n, `[sample]` for how samples are drawn."""

from __future__ import annotations

import time
from pathlib import Path

from ctmtool.core.sampling import SamplingPlan
from ctmtool.errors import UserError
from ctmtool.jobs.plan import plan_sampling
from ctmtool.progress import Quiet

CHECKPOINT_SUFFIX = ".safetensors"


def is_checkpoint(path: str) -> bool:
    return str(path).lower().endswith(CHECKPOINT_SUFFIX)


def default_features(features: str | None, model) -> str:
    """`features`, else the checkpoint preset's [fid] features, else Inception."""
    if features:
        return features
    if model is None:
        return "inception"
    want = model.preset.fid.features
    if want.lower() not in ("inception", "inception-legacy") and not Path(want).expanduser().is_file():
        raise UserError(f"the checkpoint's preset names feature network {want!r}, which is not a file here; "
                        "give its path with `features` FILE.pt (or `features` inception)")
    return want


def fid_plan(model, batch: int = 256, **options) -> SamplingPlan | None:
    """How a checkpoint is sampled for FID (`ctmtool.jobs.plan.plan_sampling`: the preset's [sample] defaults;
    the EDM-equal noise stream); None for SAMPLES that are images, where any sampling option is refused."""
    if model is None:
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            raise UserError(f"{', '.join(f'`{k}`' for k in given)}: only for a checkpoint (how it is "
                            "sampled), but SAMPLES are images; drop it")
        return None
    return plan_sampling(model, batch=batch, noise="edm", **options)


def describe(plan: SamplingPlan | None) -> dict:
    """The sampling settings a FID result reports: solver, nfe and gamma (gamma-sampling) or steps, sigmas,
    class."""
    if plan is None:
        return {}
    out = {"solver": plan.solver}
    steps = len(plan.schedule) - 1
    out.update({"nfe": steps, "gamma": plan.gamma} if plan.solver == "gamma" else {"steps": steps})
    if plan.sigmas is not None:
        out["sigmas"] = list(plan.sigmas)
    if plan.class_label is not None:
        out["class_label"] = plan.class_label
    return out


def sampling_settings(model, **options) -> dict:
    """`describe(fid_plan(model, **options))`."""
    return describe(fid_plan(model, **options))


def samples_stats(samples: str, model, extractor, *, n: int | None, seed: int, batch: int | None, device,
                  keep_features: bool, plan: SamplingPlan | None, rep=None, fast: bool = True):
    """Statistics of SAMPLES: generated in memory from a checkpoint (`n` defaults to its [fid] n), or of
    images. Generating, `ctmtool.core.fastpath.fast_plan` picks the CPU batch (where `batch` is None) and a
    traced solve (logged); images are read in batches of `batch` (default 256)."""
    from ctmtool.core.fastpath import fast_plan
    from ctmtool.data.images import load_images
    from ctmtool.metrics.fid import compute_stats, dataset_batches, model_batches

    rep = rep or Quiet()
    if model is not None:
        n = n or model.preset.fid.n
        plan, program = fast_plan(model, plan, device, n, batch is not None, fast, rep.log)
        with rep.progress(n, "generating + features", "images") as advance:
            return compute_stats(model_batches(model, n, plan, seed, device, program), extractor, device,
                                 keep_features, advance, samples)
    batch = batch or 256
    rep.log(f"reading images from {samples}")
    t0 = time.perf_counter()
    ds = load_images(samples)
    if len(ds) < 2:
        raise UserError(f"{samples} holds {len(ds)} image(s); a Frechet distance needs at least 2")
    rep.log(f"read {len(ds)} images of {'x'.join(map(str, ds.shape))} in {time.perf_counter() - t0:.1f} s")
    total = min(n, len(ds)) if n else len(ds)
    with rep.progress(total, "features", "images") as advance:
        return compute_stats(dataset_batches(ds, batch, n, seed), extractor, device, keep_features, advance,
                             ds.name)


def reference(ref: str | None, model, extractor, *, device, cache, batch: int, kid: bool, rep=None):
    """(name, statistics) of the reference: a name in the cache, a statistics file, or images (computed here);
    default: the checkpoint preset's [fid] ref."""
    from ctmtool.data.images import load_images
    from ctmtool.metrics.fid import compute_stats, dataset_batches, is_stats_file, reference_stats

    rep = rep or Quiet()
    ref = ref or (model.preset.fid.ref if model is not None else None)
    if ref is None:
        raise UserError("`ref` is missing: give a named reference (e.g. cifar10-train), a statistics .npz or "
                        "a folder/zip/npz of real images")
    p = Path(ref).expanduser()
    if p.exists() and not (p.is_file() and p.suffix.lower() == ".npz" and is_stats_file(p)):
        rep.log(f"computing reference statistics of {p} (save them once with `ctmtool fid stats {ref} -o "
                "FILE.npz`)")
        ds = load_images(p)
        rep.log(f"read {len(ds)} reference images of {'x'.join(map(str, ds.shape))}")
        with rep.progress(len(ds), "reference features", "images") as advance:
            stats = compute_stats(dataset_batches(ds, batch), extractor, device, kid, advance, str(p))
    else:
        stats = reference_stats(ref, extractor, device, cache)
    if kid and stats.feats is None:
        raise UserError(f"`kid` needs raw reference features but {ref} holds only mean and covariance; "
                        "recompute it with `ctmtool fid stats` keeping raw features, or leave out `kid`")
    return ref, stats
