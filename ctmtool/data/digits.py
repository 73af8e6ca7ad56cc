"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, labels 0..9 (no download)."""

from __future__ import annotations

import numpy as np
import torch

from ctmtool.data.base import Dataset


def load_digits() -> Dataset:
    """The digits as uint8 (1797, 1, 8, 8), values 0..16 scaled to 0..255 and rounded."""
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    pixels = np.rint(raw.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    values = torch.from_numpy(pixels[:, None].copy())
    labels = torch.from_numpy(raw.target.astype(np.int64))
    return Dataset(values, labels, num_classes=10, name="digits (scikit-learn)",
                   class_names=[str(i) for i in range(10)])
