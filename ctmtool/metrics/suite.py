"""The sample-quality suite of ADM's evaluator on any feature network: FID, KID, IS, precision/recall, sFID.

One pass over each image set collects what the asked metrics need (pooled features, class logits,
spatial-feature moments); `evaluate` turns two such collections into the figures:

    extractor = make_extractor("fd_a.pt")
    ref = collect(dataset_batches(load_images("real/"), 256), extractor, heads_for(METRICS))
    fake = collect(dataset_batches(load_images("samples/"), 256), extractor, heads_for(METRICS))
    evaluate(fake, ref, METRICS)   # {"fid": ..., "kid": ..., "is": ..., "precision": ..., "recall": ...,
                                   # "sfid": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ctmtool.data.base import to_uint8_images
from ctmtool.errors import UserError
from ctmtool.metrics.features import FeatureExtractor
from ctmtool.metrics.frechet import Moments, frechet_distance, kid
from ctmtool.metrics.scores import IS_SPLIT_SIZE, PR_NEIGHBOURS, inception_score, precision_recall

METRICS = ("fid", "kid", "is", "pr", "sfid")
NEEDS = {"fid": "pool", "kid": "pool", "pr": "pool", "is": "logits", "sfid": "spatial"}
REF_FREE = {"is"}  # metrics of the samples alone


@dataclass
class Collected:
    """What one image set gave: raw pooled features, logits, and the moments of the spatial features."""

    n: int
    source: str
    pool: np.ndarray | None = None  # (n, D) float32
    logits: np.ndarray | None = None  # (n, K) float32
    spatial: Moments | None = None


def metric_names(spec: str | None) -> tuple[str, ...] | None:
    """The metrics named in a comma-separated `spec` (checked), or None for the default."""
    if spec is None:
        return None
    names = tuple(dict.fromkeys(s.strip().lower() for s in spec.split(",") if s.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric {', '.join(unknown) or repr(spec)}; choose among "
                        f"{','.join(METRICS)}")
    return names


def parse_metrics(spec: str | None, extractor: FeatureExtractor) -> tuple[str, ...]:
    """The metrics named in a comma-separated `spec`; default: every metric the feature network supports."""
    names = metric_names(spec)
    if names is None:
        return tuple(m for m in METRICS if extractor.has_head(NEEDS[m]))
    for m in names:
        if not extractor.has_head(NEEDS[m]):
            raise UserError(f"{m}: {extractor.missing_head(NEEDS[m])}; drop {m} from `metrics` or use "
                            "another feature network")
    return names


def heads_for(metrics: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(NEEDS[m] for m in metrics))


def collect(images: Iterable[torch.Tensor], extractor: FeatureExtractor, heads: tuple[str, ...],
            progress: Callable[[int], None] | None = None, source: str = "") -> Collected:
    """Run `extractor` over batches (uint8 NCHW, or float in [-1, 1]) and keep what `heads` asks for."""
    pool, logits, spatial, n = [], [], Moments() if "spatial" in heads else None, 0
    for x in images:
        x = x if x.dtype == torch.uint8 else to_uint8_images(x)
        out = extractor.heads(x, heads)
        if "pool" in out:
            pool.append(out["pool"].cpu().numpy())
        if "logits" in out:
            logits.append(out["logits"].cpu().numpy())
        if spatial is not None:
            spatial.update(out["spatial"])
        n += len(x)
        if progress is not None:
            progress(len(x))
    if n < 2:
        raise UserError(f"{source or 'the images'}: the metrics need at least 2 images, got {n}")
    return Collected(n, source, np.concatenate(pool) if pool else None,
                     np.concatenate(logits) if logits else None, spatial)


def _moments(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = Moments()
    m.update(feats)
    return m.result()


def evaluate(samples: Collected, ref: Collected | None, metrics: tuple[str, ...], *, k: int = PR_NEIGHBOURS,
             is_split_size: int = IS_SPLIT_SIZE, kid_subsets: int = 100, kid_subset_size: int = 1000,
             seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """The figures of `metrics` for `samples` against `ref` (None allowed when only IS is asked)."""
    if ref is None and set(metrics) - REF_FREE:
        raise UserError(f"{', '.join(sorted(set(metrics) - REF_FREE))} compare against reference images: "
                        "give `ref`")
    out: dict = {"n": samples.n}
    if ref is not None:
        out["n_ref"] = ref.n
    if "fid" in metrics:
        out["fid"] = frechet_distance(*_moments(samples.pool), *_moments(ref.pool))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(samples.pool, ref.pool, kid_subsets, kid_subset_size, seed)
    if "is" in metrics:
        out["is"], out["is_std"] = inception_score(samples.logits, is_split_size, seed)
        out["is_splits"] = -(-samples.n // is_split_size)
    if "pr" in metrics:
        if min(samples.n, ref.n) <= k:
            raise UserError(f"precision/recall with k = {k} needs more than {k} images on each side "
                            f"(got {samples.n} samples, {ref.n} reference)")
        out["precision"], out["recall"] = precision_recall(ref.pool, samples.pool, k, device)
        out["pr_k"] = k
    if "sfid" in metrics:
        out["sfid"] = frechet_distance(*samples.spatial.result(), *ref.spatial.result())
    return out


__all__ = ["METRICS", "Collected", "collect", "evaluate", "heads_for", "metric_names", "parse_metrics"]
