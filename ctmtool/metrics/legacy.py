"""FID as published CIFAR-10 / ImageNet numbers compute it: legacy TensorFlow-Inception features, EDM/ADM
references.

Published FIDs (EDM, CTM: ctm-cifar10 train_util.py 633-644) use the TF-FID Inception network fed the
uint8 images directly; the network resizes them to 299 x 299 inside (TensorFlow's bilinear resize). This
is clean-fid's `mode="legacy_tensorflow"` (its `build_resizer` then does nothing and
`InceptionV3W(resize_inside=True)` calls `base(x, return_features=True)`); the weights are the same
`inception-2015-12-05.pt` as the clean mode's. References are EDM's statistics files (`mu`, `sigma`,
e.g. cifar10-32x32.npz) or ADM's reference batches (`arr_0` images and, for the TF evaluator, `mu`, `sigma`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ctmtool.errors import UserError
from ctmtool.metrics.features import INCEPTION_DIM, FeatureExtractor

EDM_REFS = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"
KNOWN_REFS = {  # file name -> where it comes from
    "cifar10-32x32.npz": EDM_REFS + "cifar10-32x32.npz",
    "ffhq-64x64.npz": EDM_REFS + "ffhq-64x64.npz",
    "afhqv2-64x64.npz": EDM_REFS + "afhqv2-64x64.npz",
    "imagenet-64x64.npz": EDM_REFS + "imagenet-64x64.npz",
    "VIRTUAL_imagenet64_labeled.npz":
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz",
}


def missing_reference_hint(path: str | os.PathLike) -> str:
    """Where a known reference file comes from (empty when the name is not a known EDM/ADM reference)."""
    url = KNOWN_REFS.get(Path(path).name)
    return f"; it is published at {url} (download it on a machine with internet access)" if url else ""


def is_foreign_reference(path: str | os.PathLike) -> bool:
    """An .npz of EDM (mu, sigma) or ADM (arr_0 images, and mu, sigma) that ctmtool did not write."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
    except (OSError, ValueError, EOFError):
        return False
    return "format" not in files and ({"mu", "sigma"} <= files or "arr_0" in files)


def read_foreign_reference(path: str | os.PathLike, extractor: FeatureExtractor):
    """An EDM/ADM reference .npz for the Inception `extractor`: (mu, sigma, n, None) from its mu/sigma (taken
    to be of the extractor's mode: EDM's and ADM's files are legacy-TensorFlow statistics), else (None, None,
    0, images) with its `arr_0` images as a Dataset to compute statistics of."""
    from ctmtool.data.base import Dataset

    path = Path(path)
    if extractor.name != "inception":
        raise UserError(f"{path} is an EDM/ADM Inception reference; score it with the Inception features "
                        f"(`features` inception-legacy for published numbers), not with {extractor.name}")
    with np.load(path, allow_pickle=False) as z:
        if "mu" in z.files and "sigma" in z.files:
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            if mu.shape != (INCEPTION_DIM,) or sigma.shape != (INCEPTION_DIM, INCEPTION_DIM):
                raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not 2048-dim Inception "
                                "statistics")
            return mu, sigma, int(len(z["arr_0"])) if "arr_0" in z.files else 0, None
        images = z["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise UserError(f"{path}: arr_0 is {images.dtype} {images.shape}; expected uint8 NHWC images (ADM's "
                        "layout)")
    return (None, None, 0,
            Dataset(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), name=str(path)))
