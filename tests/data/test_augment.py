"""DiffAugment: shapes, exact translation/cutout behaviour, colour ranges, reproducibility, gradients."""

from __future__ import annotations

import pytest
import torch

from ctmtool.data.augment import color, cutout, diff_augment, random_cutout, random_translation, translate


def test_translate_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = translate(x, torch.tensor([1]), torch.tensor([-2]))
    expected = torch.tensor([[0.0, 0, 0, 0], [2, 3, 0, 0], [6, 7, 0, 0], [10, 11, 0, 0]])
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(translate(x, torch.tensor([0]), torch.tensor([0])), x)


def test_translate_per_sample_and_channels():
    x = torch.randn(2, 3, 5, 5)
    out = translate(x, torch.tensor([0, -1]), torch.tensor([1, 0]))
    assert torch.equal(out[0, :, :, 1:], x[0, :, :, :-1]) and torch.equal(out[0, :, :, 0], torch.zeros(3, 5))
    assert torch.equal(out[1, :, :-1], x[1, :, 1:]) and torch.equal(out[1, :, -1], torch.zeros(3, 5))


def test_cutout_exact():
    x = torch.ones(1, 2, 6, 6)
    out = cutout(x, torch.tensor([3]), torch.tensor([1]), (2, 4))
    mask = torch.ones(6, 6)
    mask[2:4, 0:3] = 0  # rows 3-1..3+1, cols 1-2..1+2 clipped at 0
    assert torch.equal(out[0, 0], mask) and torch.equal(out[0, 1], mask)


def test_random_translation_on_constant_image():
    """Each output is the constant on an (H-|dy|) x (W-|dx|) window at a border, |d| <= 1/8 of the size, zeros
    elsewhere."""
    x = torch.ones(64, 1, 16, 16)
    out = random_translation(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts = set()
    for o in out[:, 0]:
        rows, cols = o.sum(1), o.sum(0)
        h, w = int((rows > 0).sum()), int((cols > 0).sum())
        assert set(o.unique().tolist()) <= {0.0, 1.0}
        assert int(o.sum()) == h * w  # the ones form an h x w rectangle
        dy, dx = 16 - h, 16 - w
        assert dy <= 2 and dx <= 2  # 16 * 0.125 = 2
        nz = (rows > 0).nonzero()
        assert nz.min() == 0 or nz.max() == 15  # the window touches a border
        shifts.add((dy, dx))
    assert len(shifts) > 3  # several shifts drawn


def test_random_cutout_on_constant_image():
    """Each output has a zero rectangle of at most half the size per side (whole inside, clipped at a
    border)."""
    x = torch.ones(64, 1, 8, 8)
    out = random_cutout(x, torch.Generator().manual_seed(0))
    full = 0
    for o in out[:, 0]:
        zero = o == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 2 <= h <= 4 and 2 <= w <= 4  # centre inside the image: at least half the patch remains
        assert int(zero.sum()) == h * w  # a rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        full += h * w == 16
    assert full > 0


def test_color_ranges():
    """Brightness shifts by U[-0.5, 0.5]: on a grey constant image (saturation/contrast act on zero
    deviations)."""
    x = torch.full((256, 3, 4, 4), 0.2)
    out = color(x, torch.Generator().manual_seed(0))
    shift = out[:, 0, 0, 0] - 0.2
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))
    assert shift.min() >= -0.5 and shift.max() <= 0.5 and shift.min() < -0.4 and shift.max() > 0.4


def test_color_preserves_channel_mean_direction():
    """Saturation scales deviations from the channel mean by U[0, 2], contrast by U[0.5, 1.5]: product in [0,
    3]."""
    x = torch.zeros(128, 3, 1, 1)
    x[:, 0] = 1.0
    x[:, 1] = -1.0
    out = color(x, torch.Generator().manual_seed(1))
    ratio = (out[:, 0] - out[:, 1]).flatten() / 2
    assert ratio.min() >= 0 and ratio.max() <= 3


@pytest.mark.parametrize("policies", ["color,translation,cutout", ["color", "translation", "cutout"], "", []])
def test_diff_augment_shapes_and_reproducible(policies):
    x = torch.randn(4, 3, 8, 8)
    a = diff_augment(x, policies, torch.Generator().manual_seed(7))
    b = diff_augment(x, policies, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and torch.equal(a, b)
    if policies:
        c = diff_augment(x, policies, torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)
    else:
        assert torch.equal(a, x)


def test_diff_augment_gradient():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    out = diff_augment(x, ["color", "translation", "cutout"], torch.Generator().manual_seed(0))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_gradient_is_exact():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    translate(x, torch.tensor([1]), torch.tensor([1])).sum().backward()
    expected = torch.zeros(4, 4)
    expected[:3, :3] = 1  # pixels shifted out get no gradient
    assert torch.equal(x.grad[0, 0], expected)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'flip'"):
        diff_augment(torch.zeros(1, 1, 4, 4), ["flip"])
