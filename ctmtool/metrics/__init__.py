"""Sample-quality metrics: Frechet distance (FID) and KID on Inception or any TorchScript feature network."""

from ctmtool.metrics.features import (
    FeatureExtractor,
    InceptionFeatures,
    cache_dir,
    find_inception,
    make_extractor,
)
from ctmtool.metrics.fid import (
    Stats,
    compute_stats,
    fid_from_data,
    fid_from_model,
    fid_from_stats,
    load_stats,
    reference_stats,
    save_stats,
)
from ctmtool.metrics.frechet import Moments, frechet_distance, kid

__all__ = [
    "FeatureExtractor", "InceptionFeatures", "Moments", "Stats", "cache_dir", "compute_stats",
    "fid_from_data", "fid_from_model", "fid_from_stats", "find_inception", "frechet_distance", "kid",
    "load_stats", "make_extractor", "reference_stats", "save_stats",
]
