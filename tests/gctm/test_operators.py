"""The GCTM code's degradation operators (ctmtool.gctm.operators) against closed forms and independent code:
bicubic down-sampling against PIL's and torch's bicubic reduction, the blur matrix against a convolution with
its taps, the official SVD layout against its defining formula, JPEG against PIL, masks' fractions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ctmtool.gctm import operators as op
from ctmtool.gctm.degrade import SpecError, make_degradation


def _images(n=2, c=3, size=32, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_down_matches_pil_and_torch_inside_the_image(factor):
    x = _images(1, 1, 32)
    ours = op.bicubic_down(x, factor, truncate=False)[0, 0].numpy()
    pil = np.asarray(Image.fromarray(x[0, 0].numpy().astype(np.float32), mode="F").resize(
        (32 // factor,) * 2, Image.Resampling.BICUBIC), dtype=np.float64)
    tor = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True,
                        align_corners=False)[0, 0].numpy()
    inner = slice(2, 32 // factor - 2)  # away from the borders, where PIL renormalises and DDRM reflects
    assert np.abs(ours[inner, inner] - pil[inner, inner]).max() < 1e-5
    assert np.abs(ours[inner, inner] - tor[inner, inner]).max() < 1e-5
    # the kernel: Keys' cubic (a = -0.5) at the stretched offsets, normalised
    k = op.bicubic_kernel(factor)
    assert len(k) == 4 * factor and float(k.sum()) == pytest.approx(1.0) and torch.equal(k, k.flip(0))


def test_bicubic_down_keeps_constants_everywhere():
    x = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(op.bicubic_down(x, 4, truncate=False),
                          torch.full((1, 3, 4, 4), 0.3, dtype=torch.float64))


def test_blur_matrix_is_a_zero_padded_convolution_with_the_four_leading_taps():
    k = op.gauss_kernel5()
    h = op.blur_matrix(k, 12)
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    taps = k[:4]  # offsets -2..1: the official loop stops before offset +2
    w = torch.zeros(5, dtype=torch.float64)
    w[:4] = taps
    conv = F.conv2d(F.conv2d(x, w.reshape(1, 1, 5, 1), padding=(2, 0)), w.reshape(1, 1, 1, 5), padding=(0, 2))
    assert torch.allclose(op.separable(x, h), conv, atol=1e-12)
    assert float(op.gauss_kernel5().sum()) == pytest.approx(1.0)
    assert op.gauss_kernel5()[2] / op.gauss_kernel5()[3] == pytest.approx(np.exp(0.5 / 0.8**2))


def test_truncated_singulars_are_the_originals_with_small_ones_zeroed():
    h = op.blur_matrix(op.uniform_kernel5(), 16)
    s = torch.linalg.svdvals(h)
    t = torch.linalg.svdvals(op.truncate_singulars(h))
    want = torch.where(s < op.DDRM_ZERO, torch.zeros_like(s), s)
    assert (s < op.DDRM_ZERO).any()  # the uniform kernel has a small singular value at this size
    assert torch.allclose(t.sort().values, want.sort().values, atol=1e-10)


def test_official_blur_layout_against_its_defining_formula():
    """y = U_2d diag(s[k mod N]) V_2d^T vec(x) with pixel-major vectors, written out with Kronecker
    products."""
    n = 6
    x = _images(1, 3, n, seed=1)
    h = op.blur_matrix(op.gauss_kernel5(), n)
    u, s, vh = torch.linalg.svd(h)
    s = torch.where(s < op.DDRM_ZERO, torch.zeros_like(s), s)
    u2, v2 = torch.kron(u, u), torch.kron(vh.T, vh.T)  # 2-D factors on row-major flattened pixels
    big, perm = torch.kron(s, s).sort(descending=True)
    rotated = v2.T @ ((x[0] + 1) / 2).reshape(3, n * n).T  # (N, 3): pixel-major
    sorted_rot = rotated[perm]  # (N, 3)
    scale = big.repeat(3).reshape(n * n, 3)  # entry (q, c) at flat index 3 q + c gets s[(3 q + c) mod N]
    y = torch.zeros_like(rotated)
    y[perm] = sorted_rot * scale
    want = (u2 @ y).T.reshape(1, 3, n, n) * 2 - 1
    assert torch.allclose(op.ddrm_blur(x, "gauss", official=True), want, atol=1e-10)
    # and it is not the per-channel blur
    assert not torch.allclose(op.ddrm_blur(x, "gauss", official=True), op.ddrm_blur(x, "gauss"), atol=1e-3)


def test_jpeg_is_pils_round_trip_and_loses_more_at_low_quality():
    x = _images(2, 3, 16, seed=2).float()
    u8 = ((x[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=30)
    pil = torch.from_numpy(np.asarray(Image.open(buf))).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(op.jpeg(x, 30)[0], pil)
    err = [float((op.jpeg(x, q) - x).abs().mean()) for q in (5, 30, 95)]
    assert err[0] > err[1] > err[2]


def test_masks_cover_the_asked_fractions_and_follow_the_generator():
    g = torch.Generator().manual_seed(0)
    fr = [float(op.freeform_mask(64, 0.1, 0.2, g).mean()) for _ in range(20)]
    assert min(fr) >= 0.1 and max(fr) <= 0.35  # the last stroke may overshoot the drawn target
    m = op.random_mask_range(32, 0.8, 0.92, torch.Generator().manual_seed(1))
    assert 0.8 <= float(m.mean()) <= 0.92 and set(m.unique().tolist()) <= {0.0, 1.0}
    x = _images(3, 3, 32)
    a = make_degradation("inpaint-freeform1020")(x, torch.Generator().manual_seed(5))
    b = make_degradation("inpaint-freeform1020")(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a[0] != x[0], a[1] != x[1])  # per image, reproducible
    c = make_degradation("center_white")(x)
    assert (c[..., 8:24, 8:24] == 1).all() and torch.equal(c[..., :8, :], x[..., :8, :])
    # the official names fill holes with noise, as the official InverseCoupling does
    n = make_degradation("inpaint-center")(x, torch.Generator().manual_seed(0))
    assert torch.equal(n[..., :8, :], x[..., :8, :]) and abs(float(n[..., 8:24, 8:24].std()) - 1) < 0.15


@pytest.mark.parametrize("spec,fn,args", [
    ("sr4x-bicubic", "sr_bicubic", (4,)), ("sr2x-pool", "sr", (2, "nearest")), ("jpeg-5", "jpeg", (5,)),
    ("blur-gauss", "ddrm_blur", ("gauss", 0.8, True)), ("blur_uni", "ddrm_blur", ("uni", 0.8, False)),
    ("inpaint-random", "inpaint_random_range", (0.8, 0.92, "noise")),
    ("freeform:0.3:0.4", "inpaint_freeform", (0.3, 0.4, "white")),
    ("inpaint-center", "inpaint_box", (0.25, False, "noise")),
])
def test_official_and_ctmtool_spec_names(spec, fn, args):
    d = make_degradation(spec)
    assert (d.fn.__name__, d.args) == (fn, args)


@pytest.mark.parametrize("spec", ["sr1_bicubic", "jpeg:0", "blur_uni:2", "freeform:0.5:0.1", "blur-gauss:3",
                                  "freeform:0.1:0.2:grey"])
def test_bad_specs(spec):
    with pytest.raises(SpecError):
        make_degradation(spec)
