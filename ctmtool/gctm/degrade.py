"""Degradations y = H(x) that make the source side x1 of a restoration coupling (GCTM; I2SB's operators).

Every function takes float NCHW images in [-1, 1] and returns a batch of the same shape, so the source
and target of a GCTM live in the same space (the GCTM reference, after I2SB, feeds the network the
low-resolution image upsampled back to full size). Random operators draw from an optional
`torch.Generator` and nothing else, so a fixed generator state gives a fixed result. Everything except
`edges` (a hard threshold) is differentiable in x.

`make_degradation(spec)` parses a short spec into a callable `(x, generator=None) -> x1`; the grammar
is `name[:arg[:arg]]`:

    sr2, sr4, srN[:nearest|bicubic]         area-average downsampling by N, upsampled back (nearest)
    blur[:sigma]                            Gaussian blur, sigma in pixels (default 0.8, as the reference)
    inpaint[:fraction[:zero|noise]]         centred box covering `fraction` of the area (default 0.25)
    inpaint_anywhere[:fraction[:fill]]      the same box at a random position per image
    inpaint_random[:fraction[:fill]]        random missing pixels, exactly `fraction` of them per image
    noise[:std]                             additive Gaussian noise (default 0.1)
    colorize                                luminance replicated on every channel (source for colourisation)
    edges[:threshold]                       black Sobel edges on white, like the edges2shoes sketches

The GCTM code's own operators (`ctmtool.gctm.operators`; DDRM's matrices, holes filled white):

    srN_bicubic                             DDRM bicubic down-sampling by N, nearest up-sampling back
    blur_uni, blur_gauss[:sigma]            DDRM's 5-tap uniform / Gaussian (sigma 0.8) deblurring operators
    blur_uni:official, blur_gauss:S:official  the same, applied as the GCTM code applies them (see operators)
    jpeg[:quality]                          PIL JPEG round trip (default quality 10)
    freeform[:lo[:hi[:white|noise]]]        free-form brush-stroke holes covering U[lo, hi] (default 0.1..0.2)
    random_mask[:lo[:hi[:white|noise]]]     random missing pixels, fraction U[lo, hi] (default 0.8..0.92)
    center_white                            the H/2 x W/2 centre box filled white

and the official names themselves: sr4x-bicubic, sr2x-pool, blur-uni, blur-gauss, jpeg-10, inpaint-center,
inpaint-random, inpaint-freeform1020, inpaint-freeform2030 (holes filled with noise, as the official
coupling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ctmtool.errors import UserError

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights


class SpecError(UserError, ValueError):
    """An unknown or malformed degradation/coupling spec (a UserError for the CLI, a ValueError for code)."""


# --------------------------------------------------------------------------------------------------
# Helpers


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float NCHW image batch, got {tuple(x.shape)} {x.dtype}")


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws from `generator` (on its own device), moved to `device`."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) draws from `generator` (on its own device), moved to `device`."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by `pad` each side, half-sample symmetric (d c b a | a b c d | d c b
    a)."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def reflect_pad(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Pad the last two axes by reflection about the image border (scipy.ndimage mode 'reflect').

    The edge pixel is repeated, so any symmetric kernel keeps the image mean exactly; torch's 'reflect'
    mode (scipy's 'mirror') skips the edge pixel and does not. Pads larger than the image are allowed.
    """
    x = x.index_select(-2, _reflect_index(x.shape[-2], pad_h, x.device))
    return x.index_select(-1, _reflect_index(x.shape[-1], pad_w, x.device))


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel with the same 2-D kernel (kh, kw odd), reflect padding, same size out."""
    kh, kw = kernel.shape
    c = x.shape[1]
    w = kernel.to(x).expand(c, 1, kh, kw)
    return F.conv2d(reflect_pad(x, kh // 2, kw // 2), w, groups=c)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance: BT.601 weights for RGB, the image itself for one channel."""
    _check(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"luminance needs 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Degradations


def sr(x: torch.Tensor, factor: int = 4, up: str = "nearest",
       generator: torch.Generator | None = None) -> torch.Tensor:
    """Super-resolution source (I2SB/GCTM 'sr4x-pool'): average `factor` x `factor` blocks, upsample back.

    up = 'nearest' repeats each low-resolution pixel (the reference's choice; the result is a linear,
    mean-preserving map), 'bicubic' interpolates (may overshoot [-1, 1] slightly; not clamped).
    """
    _check(x)
    h, w = x.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"sr factor {factor} must divide the image size {h}x{w}")
    if up not in ("nearest", "bicubic"):
        raise ValueError(f"sr upsampling must be 'nearest' or 'bicubic', got {up!r}")
    low = F.avg_pool2d(x, factor)
    if up == "nearest":
        return low.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian taps on [-r, r], r = int(truncate * sigma + 0.5) (scipy.ndimage's rule)."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    r = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def blur(x: torch.Tensor, sigma: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (GCTM restores 'blur-gauss', sigma 0.8)."""
    _check(x)
    k = gaussian_kernel1d(sigma)
    return _depthwise(_depthwise(x, k[None, :]), k[:, None])


def inpaint_box_mask(x: torch.Tensor, fraction: float = 0.25, random: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, H, W) float mask, 1 = missing: a box of round(sqrt(fraction) * side) per side.

    Centred by default (fraction 0.25 gives the reference's H/2 x W/2 box at H/4, W/4); with `random`
    each image gets its own uniformly placed box.
    """
    _check(x)
    if not 0 <= fraction <= 1:
        raise ValueError(f"inpaint fraction must be in [0, 1], got {fraction}")
    b, _, h, w = x.shape
    bh, bw = round(h * math.sqrt(fraction)), round(w * math.sqrt(fraction))
    if random:
        top = (rand((b,), generator, x.device) * (h - bh + 1)).long().clamp(max=h - bh)
        left = (rand((b,), generator, x.device) * (w - bw + 1)).long().clamp(max=w - bw)
    else:
        top = torch.full((b,), (h - bh) // 2, device=x.device)
        left = torch.full((b,), (w - bw) // 2, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + bh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + bw)[:, None, None]))
    return inside[:, None].to(x.dtype)


def random_pixel_mask(x: torch.Tensor, fraction: float = 0.5,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, H, W) float mask, 1 = missing: exactly round(fraction * H * W) pixels per image, all
    channels."""
    _check(x)
    if not 0 <= fraction <= 1:
        raise ValueError(f"inpaint_random fraction must be in [0, 1], got {fraction}")
    b, _, h, w = x.shape
    k = round(fraction * h * w)
    ranks = rand((b, h * w), generator, x.device).argsort(1).argsort(1)
    return (ranks < k).reshape(b, 1, h, w).to(x.dtype)


def fill_masked(x: torch.Tensor, mask: torch.Tensor, fill: str = "zero",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace masked pixels: 'zero' (mid-grey in [-1, 1]) or 'noise' (standard Gaussian, the GCTM
    reference)."""
    if fill == "zero":
        return x * (1 - mask)
    if fill == "noise":
        return x * (1 - mask) + mask * randn(x.shape, generator, x.device, x.dtype)
    raise ValueError(f"inpaint fill must be 'zero' or 'noise', got {fill!r}")


def inpaint_box(x: torch.Tensor, fraction: float = 0.25, random: bool = False, fill: str = "zero",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Box inpainting source: the `inpaint_box_mask` region filled with `fill` ('zero' = grey, or 'noise')."""
    mask = inpaint_box_mask(x, fraction, random, generator)
    return fill_masked(x, mask, fill, generator)


def inpaint_random(x: torch.Tensor, fraction: float = 0.5, fill: str = "zero",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Random-pixel inpainting source: the `random_pixel_mask` pixels filled with `fill`."""
    mask = random_pixel_mask(x, fraction, generator)
    return fill_masked(x, mask, fill, generator)


def noise(x: torch.Tensor, std: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising source: x + std * n, n standard Gaussian."""
    _check(x)
    if std < 0:
        raise ValueError(f"noise std must be non-negative, got {std}")
    return x + std * randn(x.shape, generator, x.device, x.dtype)


def colorize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Colourisation source: BT.601 luminance replicated on every channel (same shape as x)."""
    return luminance(x).expand_as(x).contiguous()


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) gradient magnitude of the luminance: Sobel / 8, so a step of height h reads h/2."""
    y = luminance(x)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    gx, gy = _depthwise(y, kx), _depthwise(y, kx.T)
    return (gx.square() + gy.square()).sqrt()


def edges(x: torch.Tensor, threshold: float = 0.2, sigma: float = 0.0, invert: bool = True,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Edge-map source: Sobel magnitude of the luminance (optionally pre-blurred) > threshold.

    invert=True (default) draws black edges (-1) on white (+1) like the pix2pix edges2shoes sketches;
    invert=False gives white on black. Replicated on every channel; not differentiable (hard threshold).
    """
    _check(x)
    y = blur(x, sigma) if sigma > 0 else x
    on = sobel_magnitude(y) > threshold
    e = torch.where(on, -1.0, 1.0) if invert else torch.where(on, 1.0, -1.0)
    return e.to(x.dtype).expand_as(x).contiguous()


# --------------------------------------------------------------------------------------------------
# Spec parser


@dataclass(frozen=True)
class Degradation:
    """A parsed spec: `deg(x, generator=None)` applies `fn(x, *args, generator=generator)`."""

    spec: str  # the text it was parsed from
    fn: Callable[..., torch.Tensor] = field(repr=False)  # one of the functions above
    args: tuple = ()  # positional parameters after x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fn(x, *self.args, generator=generator)


DEGRADATIONS = ("sr2", "sr4", "srN[:nearest|bicubic]", "blur[:sigma]", "inpaint[:fraction[:zero|noise]]",
                "inpaint_anywhere[:fraction[:fill]]", "inpaint_random[:fraction[:fill]]", "noise[:std]",
                "colorize", "edges[:threshold]", "srN_bicubic", "blur_uni", "blur_gauss[:sigma]",
                "jpeg[:quality]", "freeform[:lo[:hi]]", "random_mask[:lo[:hi]]", "center_white",
                "the GCTM code's names (sr4x-bicubic, "
                "blur-gauss, jpeg-10, inpaint-center, ...)")
# the GCTM code's corruption names (corruption/__init__.py) as ctmtool specs
# (the GCTM code's InverseCoupling fills the holes of its inpaint-* operators with Gaussian noise: so do
# these)
OFFICIAL_NAMES = {"blur-uni": "blur_uni:official", "blur-gauss": "blur_gauss:0.8:official",
                  "inpaint-center": "inpaint:0.25:noise", "inpaint-random": "random_mask:0.8:0.92:noise",
                  "inpaint-freeform1020": "freeform:0.1:0.2:noise",
                  "inpaint-freeform2030": "freeform:0.2:0.3:noise"}


def _official(spec: str) -> str:
    """A GCTM code corruption name (sr4x-pool, jpeg-10, ...) as a ctmtool spec; other specs unchanged."""
    name = spec.strip()
    if name in OFFICIAL_NAMES:
        return OFFICIAL_NAMES[name]
    if name.startswith("sr") and "x-" in name and name[2:name.index("x-")].isdigit():
        factor, kind = name[2:name.index("x-")], name[name.index("x-") + 2:]
        return {"pool": f"sr{factor}", "bicubic": f"sr{factor}_bicubic"}.get(kind, spec)
    if name.startswith("jpeg-") and name[5:].isdigit():
        return f"jpeg:{name[5:]}"
    return spec


def _gctm_operator(spec: str, name: str, args: list[str], nargs) -> Degradation | None:
    """The operators of ctmtool.gctm.operators, or None for other names."""
    import ctmtool.gctm.operators as op

    if name.startswith("sr") and name.endswith("_bicubic") and name[2:-8].isdigit():
        nargs(0)
        factor = int(name[2:-8])
        if factor < 2:
            raise SpecError(f"degradation {spec!r}: the factor must be at least 2")
        return Degradation(spec, op.sr_bicubic, (factor,))
    if name in ("blur_uni", "blur_gauss"):
        official = bool(args) and args[-1] == "official"
        nargs((0 if name == "blur_uni" else 1) + official)
        args = args[:-1] if official else args
        sigma = _float(spec, args[0], 1e-3, 1e3) if args else op.GAUSS_SIGMA
        return Degradation(spec, op.ddrm_blur, (name[5:], sigma, official))
    if name == "jpeg":
        nargs(1)
        return Degradation(spec, op.jpeg, (int(_float(spec, args[0], 1, 100)) if args else 10,))
    if name in ("freeform", "random_mask"):
        nargs(3)
        fill = args[2] if len(args) > 2 else "white"
        if fill not in ("white", "noise"):
            raise SpecError(f"degradation {spec!r}: fill must be 'white' or 'noise', got {fill!r}")
        lo = _float(spec, args[0], 0, 1) if args else (0.1 if name == "freeform" else 0.8)
        hi = _float(spec, args[1], lo, 1) if len(args) > 1 else max(lo, 0.2 if name == "freeform" else 0.92)
        return Degradation(spec, op.inpaint_freeform if name == "freeform" else op.inpaint_random_range,
                           (lo, hi, fill))
    if name == "center_white":
        nargs(0)
        return Degradation(spec, op.inpaint_center_white)
    return None


def _float(spec: str, text: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise SpecError(f"degradation {spec!r}: {text!r} is not a number") from None
    if not lo <= v <= hi:
        raise SpecError(f"degradation {spec!r}: {v} is outside [{lo}, {hi}]")
    return v


def _fill(spec: str, text: str) -> str:
    if text not in ("zero", "noise"):
        raise SpecError(f"degradation {spec!r}: fill must be 'zero' or 'noise', got {text!r}")
    return text


def make_degradation(spec: str) -> Degradation:
    """Parse `name[:arg[:arg]]` (see the module docstring) into a callable `(x, generator=None) -> x1`."""
    name, *args = _official(spec).strip().split(":")
    valid = "valid degradations: " + ", ".join(DEGRADATIONS)

    def nargs(most: int) -> None:
        if len(args) > most:
            raise SpecError(f"degradation {spec!r} takes at most {most} argument(s); {valid}")

    if (found := _gctm_operator(spec, name, args, nargs)) is not None:
        return found
    if name.startswith("sr") and name[2:].isdigit():
        nargs(1)
        factor = int(name[2:])
        if factor < 2:
            raise SpecError(f"degradation {spec!r}: the factor must be at least 2")
        up = args[0] if args else "nearest"
        if up not in ("nearest", "bicubic"):
            raise SpecError(f"degradation {spec!r}: upsampling must be 'nearest' or 'bicubic', got {up!r}")
        return Degradation(spec, sr, (factor, up))
    if name == "blur":
        nargs(1)
        return Degradation(spec, blur, (_float(spec, args[0], 1e-3, 1e3) if args else 0.8,))
    if name in ("inpaint", "inpaint_anywhere"):
        nargs(2)
        frac = _float(spec, args[0], 0, 1) if args else 0.25
        fill = _fill(spec, args[1]) if len(args) > 1 else "zero"
        return Degradation(spec, inpaint_box, (frac, name == "inpaint_anywhere", fill))
    if name == "inpaint_random":
        nargs(2)
        frac = _float(spec, args[0], 0, 1) if args else 0.5
        fill = _fill(spec, args[1]) if len(args) > 1 else "zero"
        return Degradation(spec, inpaint_random, (frac, fill))
    if name == "noise":
        nargs(1)
        return Degradation(spec, noise, (_float(spec, args[0], 0, 1e3) if args else 0.1,))
    if name == "colorize":
        nargs(0)
        return Degradation(spec, colorize)
    if name == "edges":
        nargs(1)
        return Degradation(spec, edges, (_float(spec, args[0], 0, 1e3) if args else 0.2,))
    raise SpecError(f"unknown degradation {spec!r}; {valid}")
