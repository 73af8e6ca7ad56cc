"""Pictures people can read: scatter plots with axes, ticks and a title, one range per preset (so plots
compare), the target in grey; the sweep chart's reference line."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import load_preset
from ctmtool.jobs.plots import line_chart, nice_extent, preset_view, scatter_image

BLUE, GREY, BLACK = (31, 119, 180), (185, 185, 185), (0, 0, 0)
LEFT, TOP, SIZE = 44, 26, 512


def _at(img: np.ndarray, x: float, y: float, lim: float) -> tuple[int, ...]:
    """The pixel where data point (x, y) is drawn on a plot of half-width lim."""
    px = LEFT + int((x / lim + 1) * SIZE / 2)
    py = TOP + SIZE - 1 - int((y / lim + 1) * SIZE / 2)
    return tuple(img[py, px])


def test_points_land_where_the_axes_say():
    img = scatter_image(torch.tensor([[0.5, 0.5], [-0.25, 0.75]]), extent=1.0,
                        reference=torch.tensor([[0.0, -0.5]]))
    assert img.shape == (TOP + SIZE + 30, LEFT + SIZE + 16, 3)
    assert _at(img, 0.5, 0.5, 1.0) == BLUE and _at(img, -0.25, 0.75, 1.0) == BLUE
    assert _at(img, 0.0, -0.5, 1.0) == GREY  # the target, in grey
    assert tuple(img[TOP + SIZE + 2, LEFT + SIZE // 2]) == BLACK  # the tick at 0 below the frame
    assert (img[:TOP - 4] != 255).any()  # a title above the plot


def test_one_range_per_preset():
    toy = load_preset("toy")
    target, extent = preset_view(toy)
    assert extent == preset_view(toy)[1] == 1.0  # the 8 means at radius 0.7, std 0.05: a round 1.0
    assert target.abs().max() < extent
    assert preset_view(load_preset("digits")) == (None, None)
    assert nice_extent(torch.tensor([[3.1, 0.0]])) == 3.5


def test_sample_png_is_a_readable_plot(tmp_path):
    out = tmp_path / "s.png"
    r = CliRunner().invoke(app, ["sample", "--analytic", "-p", "toy", "-n", "200", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (TOP + SIZE + 30, LEFT + SIZE + 16, 3)
    assert (img == BLUE).all(-1).sum() > 100  # the samples, drawn inside the toy range [-1, 1]


def test_sweep_chart_draws_the_reference_line():
    series = {"gamma 0": [(1, -1.0), (2, -0.5)]}
    plain = line_chart(series, "t", "NFE", "score")
    ref = line_chart(series, "t", "NFE", "score", reference=("true samples", 0.0))
    grey_rows = np.nonzero(((ref == 150).all(-1)).sum(1) > 50)[0]
    assert len(grey_rows) and not ((plain == 150).all(-1).sum(1) > 50).any()
