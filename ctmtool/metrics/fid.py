"""The evaluation API: feature statistics of images or of a model's samples, reference statistics, FID/KID.

Used by `ctmtool fid` and callable from a training loop:

    extractor = make_extractor("fd_a.pt", device)            # or "inception"
    ref = reference_stats("cifar10-train", extractor, device=device)
    plan = plan_sampling(model, nfe=1, batch=512)  # ctmtool.jobs.plan
    result = fid_from_model(model, ref, extractor, n=10000, plan=plan, seed=0, device=device)

Samples are quantised to uint8 (as if saved as PNG) and go to the feature network batch by batch on
`device`; nothing is written to disk. Statistics files are .npz (see `save_stats`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctmtool.checkpoint import atomic_write
from ctmtool.core.sampling import SamplingPlan, generate
from ctmtool.data.base import Dataset, to_uint8_images
from ctmtool.errors import UserError
from ctmtool.metrics.features import FeatureExtractor, cache_dir
from ctmtool.metrics.frechet import Moments, frechet_distance, kid
from ctmtool.metrics.legacy import is_foreign_reference, missing_reference_hint, read_foreign_reference

STATS_FORMAT = "ctmtool-fid-stats"
STATS_VERSION = 1
SMALL_N = 10000  # below this FID is noticeably biased upward
KEEP_FEATURES_MAX = 50000  # `fid stats` stores raw features (needed for KID) up to this many images
# clean-fid's own precomputed Inception statistics, used for these names when present in its stats folder
CLEANFID_STATS = {"cifar10-train": ("cifar10_clean_train_32.npz", 50000),
                  "cifar10-test": ("cifar10_clean_test_32.npz", 10000)}

Progress = Callable[[int], None] | None


@dataclass
class Stats:
    """Feature statistics of an image set: float64 mean and covariance, plus what produced them."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, unbiased covariance
    n: int  # number of images (0 when unknown)
    features: str  # feature network name: "inception" or the file's stem
    features_sha256: str  # full sha256 of the feature network file ("" when unknown)
    mode: str  # "clean" (Inception, clean-fid resize) or "native" (unresized)
    feats: np.ndarray | None = field(default=None, repr=False)  # (n, D) float32 raw features, for KID
    source: str = ""  # what the images were


def stats_of(moments: Moments, extractor: FeatureExtractor, feats: list[np.ndarray] | None,
             source: str) -> Stats:
    mu, sigma = moments.result()
    return Stats(mu, sigma, moments.n, extractor.name, extractor.sha256, extractor.mode,
                 np.concatenate(feats) if feats else None, source)


def compute_stats(images: Iterable[torch.Tensor], extractor: FeatureExtractor,
                  device: torch.device | str | None = None, keep_features: bool = False,
                  progress: Progress = None, source: str = "") -> Stats:
    """Statistics of batches of images: uint8 NCHW in [0, 255], or float NCHW in [-1, 1] (rounded to
    uint8)."""
    if device is not None:
        extractor.to(device)
    moments, feats = Moments(), [] if keep_features else None
    for x in images:
        x = x if x.dtype == torch.uint8 else to_uint8_images(x)
        f = extractor(x)
        moments.update(f)
        if feats is not None:
            feats.append(f.cpu().numpy())
        if progress is not None:
            progress(len(x))
    if moments.n < 2:
        raise UserError(f"{source or 'the images'}: FID needs at least 2 images, got {moments.n}")
    return stats_of(moments, extractor, feats, source)


def dataset_batches(ds: Dataset, batch: int, n: int | None = None, seed: int = 0) -> Iterator[torch.Tensor]:
    """uint8 image batches of `ds`: all of it, or a random subset of `n` (seeded) in file order."""
    if not ds.is_image:
        raise UserError(f"{ds.name} holds points of shape {ds.shape}, not images; FID needs images")
    idx = None
    if n is not None and n < len(ds):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    elif n is not None and n > len(ds):
        raise UserError(f"`n` = {n} asked for but {ds.name} has only {len(ds)} images; lower `n`")
    total = len(ds) if idx is None else len(idx)
    for lo in range(0, total, batch):
        yield ds.values[lo:lo + batch] if idx is None else ds.values[idx[lo:lo + batch]]


def model_batches(model, n: int, plan: SamplingPlan, seed: int = 0,
                  device: torch.device | str = "cpu", program=None) -> Iterator[torch.Tensor]:
    """uint8 batches of `n` samples from `model` drawn with `plan` (ctmtool.core.sampling.generate; image i
    uses seed + i; `program`: a traced solve of full batches, `ctmtool.core.fastpath`)."""
    if not model.is_image:
        raise UserError(f"{model.path or 'the model'} generates points of shape {model.data_shape}, not "
                        "images; FID needs an image model")
    for x, _ in generate(model, n, plan, seed=seed, device=device, program=program):
        yield to_uint8_images(x)


def fid_from_stats(stats: Stats, ref: Stats, kid_score: bool = False, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID (and KID) of `stats` against `ref`, with the fields `ctmtool fid --json` prints."""
    check_compatible(stats, ref)
    out = {"fid": frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma), "n": stats.n,
           "features": stats.features, "features_sha256": stats.features_sha256[:12], "mode": stats.mode,
           "n_ref": ref.n, "seed": seed}
    if kid_score:
        if stats.feats is None or ref.feats is None:
            which = "reference statistics" if ref.feats is None else "sample statistics"
            raise UserError(f"KID needs raw features but the {which} "
                            f"({ref.source if ref.feats is None else stats.source}) hold only mean and "
                            "covariance; recompute them with `ctmtool fid stats` (which keeps features up "
                            f"to {KEEP_FEATURES_MAX} images) or do not ask for the KID")
        out["kid"], out["kid_std"] = kid(stats.feats, ref.feats, kid_subsets, kid_subset_size, seed)
    if stats.n < SMALL_N:
        out["note"] = (f"n = {stats.n} < {SMALL_N}: FID is biased upward at small n; compare values only at "
                       "equal n (50000 is the usual choice)")
    return out


def fid_from_model(model, ref_stats: Stats, extractor: FeatureExtractor, n: int, plan: SamplingPlan,
                   seed: int = 0, device: torch.device | str = "cpu", kid_score: bool = False,
                   progress: Progress = None) -> dict:
    """Generate `n` samples in memory with `plan` (`ctmtool.jobs.plan.plan_sampling`; seeds seed..seed+n-1)
    and score them against `ref_stats`."""
    t0 = time.perf_counter()
    stats = compute_stats(model_batches(model, n, plan, seed, device), extractor, device,
                          keep_features=kid_score, progress=progress, source=str(model.path or "model"))
    out = fid_from_stats(stats, ref_stats, kid_score, seed=seed)
    out["seconds"] = time.perf_counter() - t0
    return out


def fid_from_data(data: Dataset | str | os.PathLike, ref_stats: Stats, extractor: FeatureExtractor,
                  n: int | None = None, seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
                  kid_score: bool = False, progress: Progress = None) -> dict:
    """Score a set of images (a Dataset, or a folder/zip/npz/image path) against `ref_stats`."""
    ds = data if isinstance(data, Dataset) else _load_images(data)
    t0 = time.perf_counter()
    stats = compute_stats(dataset_batches(ds, batch, n, seed), extractor, device, keep_features=kid_score,
                          progress=progress, source=ds.name)
    out = fid_from_stats(stats, ref_stats, kid_score, seed=seed)
    out["seconds"] = time.perf_counter() - t0
    return out


def _load_images(path: str | os.PathLike, progress: Progress = None) -> Dataset:
    from ctmtool.data.images import load_images

    return load_images(path, progress)


def check_compatible(stats: Stats, ref: Stats) -> None:
    """Refuse to compare statistics from different feature networks or preprocessing."""
    same_net = (stats.features_sha256 == ref.features_sha256 if stats.features_sha256 and ref.features_sha256
                else stats.features == ref.features)
    if not same_net or stats.mode != ref.mode or stats.mu.shape != ref.mu.shape:
        raise UserError(f"reference statistics {ref.source or ''} were computed with feature network "
                        f"{ref.features} (sha256 {ref.features_sha256[:12] or 'unknown'}, mode {ref.mode}, "
                        f"{ref.mu.shape[0]} dims) but the samples with {stats.features} (sha256 "
                        f"{stats.features_sha256[:12]}, mode {stats.mode}, {stats.mu.shape[0]} dims); "
                        "recompute the reference with `ctmtool fid stats` and the same `features`")


def save_stats(stats: Stats, path: str | os.PathLike, keep_features: bool = True) -> Path:
    """Write statistics as .npz (mu, sigma, n, features, features_sha256, mode, source, optional feats)
    atomically: a temporary file in the same folder, then os.replace."""
    arrays = {"format": np.array(STATS_FORMAT), "version": np.array(STATS_VERSION), "mu": stats.mu,
              "sigma": stats.sigma, "n": np.array(stats.n), "features": np.array(stats.features),
              "features_sha256": np.array(stats.features_sha256), "mode": np.array(stats.mode),
              "source": np.array(stats.source)}
    if keep_features and stats.feats is not None:
        arrays["feats"] = stats.feats.astype(np.float32)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; statistics are meant to be shared

    try:
        atomic_write(path, write)
    except OSError as err:
        raise UserError(f"could not write statistics {path}: {err.strerror or err}; check free space and "
                        "permissions") from None
    return Path(path)


def is_stats_file(path: str | os.PathLike) -> bool:
    """An .npz holding `mu` and `sigma` (ctmtool's or clean-fid's statistics), not images."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files
    except (OSError, ValueError, EOFError):
        return False


def load_stats(path: str | os.PathLike, features: str = "inception", mode: str = "clean",
               n: int = 0) -> Stats:
    """Read statistics written by `save_stats`, or clean-fid's (mu, sigma only: `features`, `mode`, `n` fill
    in)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z.files or "sigma" not in z.files:
                raise UserError(f"{path} holds no 'mu' and 'sigma'; it is not a statistics file (write one "
                                "with `ctmtool fid stats DATA -o FILE.npz`)")

            def text(key: str, default: str) -> str:
                return str(z[key]) if key in z.files else default

            return Stats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64),
                         int(z["n"]) if "n" in z.files else n, text("features", features),
                         text("features_sha256", ""), text("mode", mode),
                         z["feats"] if "feats" in z.files else None, text("source", str(path)))
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read statistics {path} ({err}); check the file or recompute it") from None


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_reference_name(name: str) -> str:
    """A reference name is letters, digits, '.', '_' and '-', without '..': it names a file inside the
    cache."""
    if not NAME.fullmatch(name) or ".." in name:
        raise UserError(f"`name` {name[:80]!r} is not a reference name: use letters, digits, '.', '_' and "
                        "'-' (no '..' or '/'), e.g. cifar10-train")
    return name


def named_stats_path(name: str, extractor: FeatureExtractor, cache: str | os.PathLike | None = None) -> Path:
    """Where `ctmtool fid stats --name NAME` keeps a named reference: <cache>/stats/<NAME>_<features>.npz. A
    name is letters, digits, '.', '_' and '-' (no '..', no separator): the file stays inside the cache's stats
    folder."""
    check_reference_name(name)
    folder = cache_dir(cache) / "stats"
    path = folder / f"{name}_{extractor.name}.npz"
    if path.resolve().parent != folder.resolve():
        raise UserError(f"`name` {name!r} would leave the cache folder {folder}; choose a plain name")
    return path


def _cleanfid_stats(name: str) -> tuple[Path, int] | None:
    """clean-fid's downloaded statistics for a known name, if present in its package folder."""
    import importlib.util

    if name not in CLEANFID_STATS:
        return None
    spec = importlib.util.find_spec("cleanfid")
    if spec is None or spec.origin is None:
        return None
    file, n = CLEANFID_STATS[name]
    p = Path(spec.origin).parent / "stats" / file
    return (p, n) if p.is_file() else None


def reference_stats(ref: str, extractor: FeatureExtractor, device: torch.device | str = "cpu",
                    cache: str | os.PathLike | None = None, batch: int = 256, keep_features: bool = False,
                    progress: Progress = None, log: Callable[[str], None] | None = None) -> Stats:
    """Statistics for `ref`: a statistics .npz, images (folder, zip, npz, image file) or a named reference."""
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix.lower() == ".npz" and extractor.name == "inception" \
            and is_foreign_reference(p):
        mu, sigma, n, images = read_foreign_reference(p, extractor)
        stats = (Stats(mu, sigma, n, extractor.name, "", extractor.mode, None,
                       f"{p} (mu, sigma; taken as {extractor.mode} statistics)") if images is None
                 else compute_stats(dataset_batches(images, batch), extractor, device, False, progress,
                                    str(p)))
    elif p.is_file() and p.suffix.lower() == ".npz" and is_stats_file(p):
        stats = load_stats(p)
    elif p.exists():
        if log:
            log(f"computing reference statistics of {p} (save them once with `ctmtool fid stats {p} -o "
                "FILE.npz`)")
        ds = _load_images(p)
        stats = compute_stats(dataset_batches(ds, batch), extractor, device, keep_features, progress, str(p))
    elif "/" not in ref and os.sep not in ref and not p.suffix:
        stats = _named_stats(ref, extractor, cache)
    else:
        raise UserError(f"reference {ref} does not exist{missing_reference_hint(ref)}; give a statistics "
                        ".npz, a folder/zip/npz of images or a named reference (see `ctmtool fid stats "
                        "--name`)")
    check_compatible(Stats(stats.mu, stats.sigma, 0, extractor.name, extractor.sha256, extractor.mode), stats)
    return stats


def _named_stats(name: str, extractor: FeatureExtractor, cache: str | os.PathLike | None) -> Stats:
    path = named_stats_path(name, extractor, cache)
    if path.is_file():
        return load_stats(path)
    if extractor.name == "inception" and (found := _cleanfid_stats(name)):
        return load_stats(found[0], n=found[1])
    feat = "inception" if extractor.name == "inception" else str(extractor.path)
    raise UserError(f"no statistics for reference {name!r} with feature network {extractor.name}: expected "
                    f"{path}; compute them once with `ctmtool fid stats FOLDER_OF_REAL_IMAGES --name {name} "
                    f"--features {feat}` (or give `ref` a folder/zip/npz of real images or a statistics "
                    "file)")
