"""Degradations against known truths: constant and checker images, scipy's Gaussian filter, exact
fractions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctmtool.errors import UserError
from ctmtool.gctm import degrade as D


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b=2, c=3, h=16, w=16, seed=0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed)) * 2 - 1


def checker(h: int, w: int, cell: int) -> torch.Tensor:
    """(1, 1, h, w) checkerboard of +-1 with square cells of `cell` pixels."""
    r = torch.arange(h)[:, None] // cell
    c = torch.arange(w)[None, :] // cell
    return (((r + c) % 2) * 2 - 1).float()[None, None]


# ---------------------------------------------------------------------------------------------- sr


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("up", ["nearest", "bicubic"])
def test_sr_keeps_a_constant_image(factor, up):
    x = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(D.sr(x, factor, up), x)


@pytest.mark.parametrize("factor", [2, 4])
def test_sr_averages_a_fine_checker_to_grey(factor):
    x = checker(16, 16, 1).expand(2, 3, 16, 16)  # cells of 1 pixel: every factor x factor block averages to 0
    assert D.sr(x, factor).abs().max() < 1e-6


def test_sr_keeps_a_checker_aligned_with_its_blocks():
    x = checker(16, 16, 4)
    torch.testing.assert_close(D.sr(x, 4), x)  # 4x4 cells on the 4x4 block grid: nothing is lost
    torch.testing.assert_close(D.sr(x, 2), x)


def test_sr_nearest_is_block_means_repeated():
    x = images()
    y = D.sr(x, 4)
    block = x[:, :, 4:8, 8:12].mean((-2, -1))
    torch.testing.assert_close(y[:, :, 4:8, 8:12], block[..., None, None].expand(-1, -1, 4, 4))
    torch.testing.assert_close(y.mean((-2, -1)), x.mean((-2, -1)))  # area averaging keeps the mean


def test_sr_refuses_a_size_the_factor_does_not_divide():
    with pytest.raises(ValueError, match="divide"):
        D.sr(torch.zeros(1, 3, 10, 10), 4)


def test_sr_is_differentiable():
    x = images().requires_grad_()
    D.sr(x, 2, "bicubic").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------- blur


def test_blur_keeps_a_constant_image():
    x = torch.full((1, 3, 9, 12), -0.4)
    torch.testing.assert_close(D.blur(x, 2.0), x)


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_blur_keeps_the_mean_exactly(sigma):
    x = images(h=12, w=10)  # sigma 5 pads by 20 > the image: repeated reflections
    torch.testing.assert_close(D.blur(x, sigma).mean((-2, -1)), x.mean((-2, -1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_blur_matches_scipy_gaussian_filter(sigma):
    x = images(b=1, c=2, h=13, w=11)
    want = np.stack([ndimage.gaussian_filter(x[0, c].double().numpy(), sigma, mode="reflect")
                     for c in range(2)])
    torch.testing.assert_close(D.blur(x, sigma)[0].double(), torch.from_numpy(want), atol=1e-6, rtol=0)


def test_blur_smooths_a_checker():
    x = checker(16, 16, 1)
    assert D.blur(x, 2.0).abs().max() < 0.05 < x.abs().max()


# ---------------------------------------------------------------------------------------------- inpaint


def test_centred_box_is_the_reference_half_size_box():
    x = torch.zeros(2, 3, 32, 32)
    m = D.inpaint_box_mask(x, 0.25)
    assert m.shape == (2, 1, 32, 32)
    assert m[:, :, 8:24, 8:24].eq(1).all() and m.sum() == 2 * 16 * 16


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_random_box_has_the_fraction_and_moves(fraction):
    x = torch.zeros(64, 3, 32, 32)
    m = D.inpaint_box_mask(x, fraction, random=True, generator=gen())
    side = round(32 * fraction**0.5)
    assert (m.sum((1, 2, 3)) == side * side).all()
    assert len({tuple(mi.nonzero()[0].tolist()) for mi in m}) > 10  # boxes at many places
    torch.testing.assert_close(m, D.inpaint_box_mask(x, fraction, random=True, generator=gen()))


def test_inpaint_box_fills_with_grey_or_noise():
    x = images(h=32, w=32)
    m = D.inpaint_box_mask(x)
    y = D.inpaint_box(x)
    assert y[:, :, 8:24, 8:24].eq(0).all()
    torch.testing.assert_close(y * (1 - m), x * (1 - m))
    z = D.inpaint_box(x, fill="noise", generator=gen())
    hole = z[:, :, 8:24, 8:24]
    assert 0.8 < hole.std() < 1.2 and hole.mean().abs() < 0.1


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_random_pixel_mask_has_the_exact_fraction(fraction):
    x = torch.zeros(4, 3, 10, 10)
    m = D.random_pixel_mask(x, fraction, gen())
    assert (m.sum((1, 2, 3)) == round(fraction * 100)).all()
    y = D.inpaint_random(torch.ones(4, 3, 10, 10), fraction, generator=gen())
    # all channels masked together
    assert (y == 0).float().mean() == pytest.approx(round(fraction * 100) / 100)


def test_random_pixel_mask_is_a_function_of_the_generator():
    x = torch.zeros(2, 1, 8, 8)
    assert torch.equal(D.random_pixel_mask(x, 0.5, gen(3)), D.random_pixel_mask(x, 0.5, gen(3)))
    assert not torch.equal(D.random_pixel_mask(x, 0.5, gen(3)), D.random_pixel_mask(x, 0.5, gen(4)))


# ---------------------------------------------------------------------------------------------- noise, colour


@pytest.mark.parametrize("std", [0.05, 0.2])
def test_noise_has_the_std(std):
    x = torch.full((8, 3, 32, 32), 0.5)
    e = D.noise(x, std, gen()) - x
    assert e.mean().abs() < 3 * std / 150 and e.std().item() == pytest.approx(std, rel=0.03)
    torch.testing.assert_close(D.noise(x, std, gen(1)), D.noise(x, std, gen(1)))


def test_colorize_gives_equal_channels_of_the_luminance():
    x = images()
    y = D.colorize(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 0], y[:, 1])
    torch.testing.assert_close(y[:, 1], y[:, 2])
    torch.testing.assert_close(y[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    grey = x[:, :1].expand_as(x)
    torch.testing.assert_close(D.colorize(grey), grey)  # a grey image stays as it is


# ---------------------------------------------------------------------------------------------- edges


def test_edges_find_a_vertical_step():
    x = torch.full((1, 3, 12, 12), -1.0)
    x[..., 6:] = 1.0  # step between columns 5 and 6
    e = D.edges(x)
    on = e[0, 0] < 0  # black edges on white
    assert on[:, 5:7].all() and not on[:, :5].any() and not on[:, 7:].any()
    assert e.shape == x.shape and torch.equal(e[:, 0], e[:, 2])
    assert set(e.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(D.edges(x, invert=False), -e)


def test_edges_of_a_constant_or_faint_image_are_blank():
    assert D.edges(torch.full((1, 3, 8, 8), 0.2)).eq(1).all()
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 0.2  # a step of 0.2 reads 0.1 < threshold 0.2
    assert D.edges(x).eq(1).all()


def test_sobel_magnitude_reads_half_the_step():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:, :] = 1.0  # horizontal step of height 1
    mag = D.sobel_magnitude(x)
    torch.testing.assert_close(mag[0, 0, 3:5], torch.full((2, 8), 0.5))


# ---------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize("spec",
                         ["sr4", "sr2", "sr4:bicubic", "blur", "blur:2.0", "inpaint", "inpaint:0.3:noise",
                                  "inpaint_anywhere:0.2", "inpaint_random:0.7", "noise:0.2", "colorize",
                          "edges",
                                  "edges:0.3"])
def test_make_degradation_parses_and_keeps_the_shape(spec):
    deg = D.make_degradation(spec)
    x = images(h=16, w=16)
    y = deg(x, generator=gen())
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(deg(x, generator=gen()), y)  # a function of the generator


def test_make_degradation_reads_the_parameters():
    assert D.make_degradation("blur:2.0").args == (2.0,)
    assert D.make_degradation("blur").args == (0.8,)
    assert D.make_degradation("sr2").args == (2, "nearest")
    assert D.make_degradation("inpaint_random:0.7").args == (0.7, "zero")
    assert D.make_degradation("inpaint").args == (0.25, False, "zero")


@pytest.mark.parametrize("spec", ["webp", "sr", "sr1", "blur:abc", "blur:1:2", "noise:-1", "inpaint:1.5",
                                  "inpaint:0.2:white", "colorize:1", "sr4:bilinear", ""])
def test_make_degradation_refuses_bad_specs(spec):
    with pytest.raises(UserError) as err:
        D.make_degradation(spec)
    assert isinstance(err.value, ValueError)
    if spec in ("jpeg", "sr", ""):
        assert "valid degradations" in str(err.value) and "inpaint_random" in str(err.value)

