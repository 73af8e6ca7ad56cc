"""scikit-learn digits: every pixel equals sklearn's value scaled from 0..16 to 0..255."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as sk_load_digits

from ctmtool.data.digits import load_digits


def test_digits_match_sklearn():
    ds = load_digits()
    sk = sk_load_digits()
    assert ds.values.shape == (1797, 1, 8, 8) and ds.values.dtype == torch.uint8 and ds.is_image
    expected = np.rint(sk.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.values[:, 0].numpy(), expected)
    assert ds.values.max() == 255 and ds.values.min() == 0
    assert ds.labels.dtype == torch.int64 and np.array_equal(ds.labels.numpy(), sk.target)
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    assert torch.bincount(ds.labels).min() >= 170  # about 180 per digit
    assert set(np.unique(ds.values.numpy())) == {round(v * 255 / 16) for v in range(17)}
