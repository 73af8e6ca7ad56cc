"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, labels 0..9 (no download)."""

from __future__ import annotations

import numpy as np
import torch

from ctmtool.data.base import Dataset
from ctmtool.errors import UserError


def load_digits(split: str | None = None) -> Dataset:
    """The digits as uint8 (N, 1, 8, 8), values 0..16 scaled to 0..255 and rounded.

    split None: all 1,797; "train": the 1,437 whose index is not a multiple of 5; "test": the other 360
    (held out, e.g. for a real-vs-real baseline of a Frechet distance)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise UserError("the digits data come with scikit-learn, which is not installed; install it with "
                        "`pip install 'ctmtool[digits]'`") from None

    raw = sk_load_digits()
    pixels = np.rint(raw.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    values = torch.from_numpy(pixels[:, None].copy())
    labels = torch.from_numpy(raw.target.astype(np.int64))
    name = "digits (scikit-learn)"
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"digits split must be train or test, got {split!r}")
        keep = ((torch.arange(len(values)) % 5 != 0) if split == "train"
                else (torch.arange(len(values)) % 5 == 0))
        values, labels, name = values[keep], labels[keep], f"digits (scikit-learn, {split} split)"
    return Dataset(values, labels, num_classes=10, name=name,
                   class_names=[str(i) for i in range(10)])
