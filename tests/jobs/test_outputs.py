"""ctmtool.jobs.outputs: refusals before any work, and all-or-nothing writes in every format."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ctmtool.errors import UserError
from ctmtool.jobs.outputs import check_out, write_items


def test_formats(tmp_path, capsysbinary):
    img = torch.rand(3, 3, 4, 4) * 2 - 1
    assert write_items(img, tmp_path / "s.npz", True, labels=torch.arange(3))["format"] == "npz"
    z = np.load(tmp_path / "s.npz")
    assert (z["samples"].shape == (3, 4, 4, 3) and z["samples"].dtype == np.uint8
            and list(z["labels"]) == [0, 1, 2])
    info = write_items(img, tmp_path / "pngs", True, names=["a", "b", "c"])
    assert (info["files"] == 3
            and sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["a.png", "b.png", "c.png"])
    with Image.open(tmp_path / "pngs" / "a.png") as im:
        assert np.array_equal(np.asarray(im), z["samples"][0])  # the same pixels in both formats
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage folder left
    write_items(img[:1], tmp_path / "one.png", True, grid=False)
    with Image.open(tmp_path / "one.png") as im:
        assert im.size == (4, 4)
    assert write_items(torch.tensor([[0.5, -0.25]]), "-", False) == {"out": "-", "format": "npz"}
    with np.load(io.BytesIO(capsysbinary.readouterr().out)) as z:  # .npz bytes on stdout: typed, with shape
        assert z["samples"].dtype == np.float32 and z["samples"].tolist() == [[0.5, -0.25]]


def test_refusals(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"x")
    (tmp_path / "f.npz").write_bytes(b"x")
    cases = [(tmp_path / "x.txt", True, "use a .npz file"), (tmp_path / "pts", False, "for images"),
             (tmp_path / "full", True, "not empty"), (tmp_path / "f.npz", True, "already exists"),
             (tmp_path / "f.npz" / "y.npz", True, "is a file")]
    for out, is_image, words in cases:
        with pytest.raises(UserError, match=words):
            check_out(out, is_image, force=False)
    assert check_out(tmp_path / "f.npz", True, force=True) == tmp_path / "f.npz"
    with pytest.raises(UserError, match="one image but there are 3 items"):
        check_out(tmp_path / "a.png", True, False, one_png_for=3)
