"""The degradation operators of the GCTM code (1202kbs/GCTM corruption/, after I2SB and DDRM), written anew.

Linear operators are separable matrices applied to rows and columns, Y = H X H^T per channel, built as the
official code builds them (DDRM's svd_replacement.py), including its details:

- Deblurring (`blur-uni`, `blur-gauss`): H[i, j] = k[j - i + K//2] for j in [i - K//2, i + K//2) inside the
  image (zero outside): for the 5-tap kernels that is 4 taps (offsets -2..1), the last tap is never used.
  Applied to images mapped to [0, 1] and back. Kernels: uniform 1/5; Gaussian exp(-t^2 / (2 0.8^2)) on
  t = -2..2, normalised.
- Bicubic down-sampling (`sr{N}x-bicubic`): Keys' cubic (a = -0.5) stretched by the factor N, 4N taps at
  offsets (m - 2N + 0.5) / N, normalised; stride N, half-sample-symmetric padding; applied to [-1, 1] images,
  then upsampled back by nearest neighbour (I2SB's choice). Inside the image this is PIL's bicubic reduction.
- Both then zero the singular values of the 1-D matrix below 0.03 (DDRM's ZERO), H = U diag(s') V^T.
- The official deblurring applies H through its SVD with the singular values of the 2-D operator laid out
  channel-major ([s, s, s]) against a vector laid out pixel-major (pixel * 3 + channel), so entry k of the
  rotated image is scaled by s[k mod n^2] instead of its own pixel's s: not H' X H'^T per channel but a
  different linear map of the 3 channels. `ddrm_blur(..., official=True)` (the spec names `blur-uni`,
  `blur-gauss`) reproduces that map (bench/xcheck_gctm_operators.py: max difference 1e-6); `official=False`
  (`blur_uni`, `blur_gauss`) is the per-channel separable blur the code means.

Other operators: JPEG (PIL's encoder and decoder at a quality; the official code uses DDRM's differentiable
DCT approximation, which this is not), free-form brush-stroke masks (procedural, DeepFill v2's generator
style; the official code samples Palette's 10,000 precomputed ImageNet masks, which are not redistributed)
and random-pixel masks whose fraction is drawn from a range (the official: U[0.8, 0.92]). The official
`inpaint-*` operators fill the hole with white (+1), but its InverseCoupling, which makes the training pairs,
replaces the hole by standard Gaussian noise; the official names as ctmtool specs do the latter.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

DDRM_ZERO = 3e-2  # singular values below this are set to 0 (svd_replacement.py)
GAUSS_SIGMA = 0.8  # build_blur's Gaussian kernel


def _reflect(i: int, n: int) -> int:
    """Half-sample-symmetric index (DDRM's SRConv padding: -1 -> 0, n -> n - 1)."""
    if i < 0:
        return -i - 1
    if i >= n:
        return (n - 1) - (i - n)
    return i


def blur_matrix(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """DDRM Deblurring's 1-D matrix (n x n): taps at offsets -K//2 .. K//2 - 1, zero outside the image."""
    k = kernel.double()
    half = len(k) // 2
    h = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(max(0, i - half), min(n, i + half)):
            h[i, j] = k[j - i + half]
    return h


def bicubic_kernel(factor: int, a: float = -0.5) -> torch.Tensor:
    """DDRM's bicubic down-sampling taps: Keys' cubic at (m - 2 factor + 0.5) / factor, m < 4 factor,
    normalised."""
    def cubic(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    k = torch.tensor([cubic((m - math.floor(2 * factor) + 0.5) / factor) for m in range(4 * factor)],
                     dtype=torch.float64)
    return k / k.sum()


def strided_matrix(kernel: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    """DDRM SRConv's 1-D matrix (n // stride x n): centres stride//2 + stride o, reflected at the borders."""
    k = kernel.double()
    half = len(k) // 2
    h = torch.zeros(n // stride, n, dtype=torch.float64)
    for i in range(stride // 2, n + stride // 2, stride):
        for j in range(i - half, i + half):
            h[i // stride, _reflect(j, n)] += k[j - i + half]
    return h


def truncate_singulars(h: torch.Tensor, zero: float = DDRM_ZERO) -> torch.Tensor:
    """U diag(s') V^T with singular values below `zero` set to 0."""
    u, s, vh = torch.linalg.svd(h, full_matrices=False)
    return u @ torch.diag(torch.where(s < zero, torch.zeros_like(s), s)) @ vh


def separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """Y = R X C^T for every image and channel (C = R by default)."""
    cols = rows if cols is None else cols
    return torch.einsum("ij,bcjk,lk->bcil", rows.to(x), x, cols.to(x))


def gauss_kernel5(sigma: float = GAUSS_SIGMA) -> torch.Tensor:
    t = torch.arange(-2, 3, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def uniform_kernel5() -> torch.Tensor:
    return torch.full((5,), 0.2, dtype=torch.float64)


def _square(x: torch.Tensor) -> int:
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"the DDRM operators take square NCHW images, got {tuple(x.shape)}")
    return x.shape[-1]


def ddrm_blur(x: torch.Tensor, kind: str = "gauss", sigma: float = GAUSS_SIGMA, official: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """`blur-uni` / `blur-gauss`: H applied to (x + 1) / 2, mapped back to [-1, 1]; `official` applies it as
    the GCTM code does (channel-major singular values on a pixel-major vector; RGB only)."""
    n = _square(x)
    kernel = uniform_kernel5() if kind == "uni" else gauss_kernel5(sigma)
    h = blur_matrix(kernel, n)
    x01 = (x + 1) / 2
    if not official:
        return separable(x01, truncate_singulars(h)) * 2 - 1
    if x.shape[1] != 3:
        raise ValueError(f"the official blur operator is defined for RGB images, got {x.shape[1]} channels")
    return _official_svd_blur(x01, h) * 2 - 1


def _official_svd_blur(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """U (s_layout * rotated) U^T as DDRM's Deblurring.H computes it for 3 channels (see the module
    docstring)."""
    b, c, n, _ = x.shape
    u, s, vh = torch.linalg.svd(h)
    s = torch.where(s < DDRM_ZERO, torch.zeros_like(s), s)
    z = separable(x.double(), vh)  # V^T X V per channel
    big, perm = (s[:, None] * s[None, :]).reshape(-1).sort(descending=True)
    # sorted pixel-major, channel inner
    vec = z.reshape(b, c, n * n)[:, :, perm].permute(0, 2, 1).reshape(b, -1)
    vec = vec * big.repeat(c)  # channel-major singular values, as the official code lays them out
    y = torch.zeros(b, n * n, c, dtype=torch.float64, device=x.device)
    y[:, perm, :] = vec.reshape(b, n * n, c)
    return separable(y.permute(0, 2, 1).reshape(b, c, n, n), u).to(x.dtype)


def bicubic_down(x: torch.Tensor, factor: int, truncate: bool = True) -> torch.Tensor:
    """DDRM's bicubic down-sampling by `factor` (N x C x H/f x W/f); `truncate` zeroes small singulars."""
    n = _square(x)
    if n % factor:
        raise ValueError(f"bicubic factor {factor} must divide the image size {n}")
    h = strided_matrix(bicubic_kernel(factor), n, factor)
    return separable(x, truncate_singulars(h) if truncate else h)


def sr_bicubic(x: torch.Tensor, factor: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official `sr{N}x-bicubic`: bicubic down-sampling, then nearest up-sampling to the input size."""
    low = bicubic_down(x, factor)
    return low.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def jpeg(x: torch.Tensor, quality: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode each image as a JPEG of `quality` with PIL (4:2:0 for RGB) and decode it; [-1, 1] in and out."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg takes grey or RGB NCHW images, got {tuple(x.shape)}")
    u8 = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG",
                                                                         quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(dec.reshape(img.shape))
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype)
    return y / 127.5 - 1


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator)) if generator is not None else float(torch.rand(()))


def freeform_mask(size: int, lo: float = 0.1, hi: float = 0.2, generator: torch.Generator | None = None,
                  max_strokes: int = 64) -> torch.Tensor:
    """(1, size, size) float mask, 1 = hole: random brush strokes (random walks of thick lines, DeepFill v2's
    generator style) added until the hole covers a fraction drawn uniformly from [lo, hi] (or
    `max_strokes`)."""
    target = lo + (hi - lo) * _uniform(generator)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(max_strokes):
        if np.asarray(img).mean() / 255 >= target:
            break
        x, y = _uniform(generator) * size, _uniform(generator) * size
        width = max(1, round(size * (0.04 + 0.08 * _uniform(generator))))
        for _ in range(1 + int(4 * _uniform(generator))):
            angle = 2 * math.pi * _uniform(generator)
            length = size * (0.05 + 0.2 * _uniform(generator))
            nx = min(max(x + length * math.cos(angle), 0), size - 1)
            ny = min(max(y + length * math.sin(angle), 0), size - 1)
            draw.line([(x, y), (nx, ny)], fill=255, width=width)
            r = width / 2
            draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)
            x, y = nx, ny
    return torch.from_numpy(np.asarray(img) > 127).float()[None]


def random_mask_range(size: int, lo: float, hi: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, size, size) mask with int(size^2 p) random pixels missing, p ~ U[lo, hi] (the official random
    mask)."""
    p = lo + (hi - lo) * _uniform(generator)
    k = int(size * size * p)
    perm = (torch.randperm(size * size, generator=generator) if generator is not None
            else torch.randperm(size * size))
    m = torch.zeros(size * size)
    m[perm[:k]] = 1
    return m.reshape(1, size, size)


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Masks are drawn on the CPU: a generator on another device is replaced by a CPU one seeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=generator,
                                                           device=generator.device)))


def masked_white(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Holes filled with white (+1), as the official inpaint operators: x (1 - m) + m."""
    m = masks.to(x)
    return x * (1 - m) + m


def masked_fill(x: torch.Tensor, masks: torch.Tensor, fill: str,
                generator: torch.Generator | None) -> torch.Tensor:
    """Holes filled white (the operators) or with standard Gaussian noise (the official InverseCoupling, which
    replaces the operator's white by noise: X1 = (1 - m) X0 + m n)."""
    if fill == "white":
        return masked_white(x, masks)
    if fill != "noise":
        raise ValueError(f"fill must be 'white' or 'noise', got {fill!r}")
    m = masks.to(x)
    g = _cpu(generator)
    z = (torch.randn(x.shape, generator=g) if g is not None else torch.randn(x.shape)).to(x)
    return x * (1 - m) + m * z


def inpaint_freeform(x: torch.Tensor, lo: float = 0.1, hi: float = 0.2, fill: str = "white",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Free-form hole per image (fraction in [lo, hi]) filled white or with noise."""
    n = _square(x)
    g = _cpu(generator)
    return masked_fill(x, torch.stack([freeform_mask(n, lo, hi, g) for _ in range(len(x))]), fill, g)


def inpaint_random_range(x: torch.Tensor, lo: float = 0.8, hi: float = 0.92, fill: str = "white",
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Random missing pixels per image (fraction ~ U[lo, hi]), filled white or with noise (the official draws
    one mask for all images)."""
    n = _square(x)
    g = _cpu(generator)
    return masked_fill(x, torch.stack([random_mask_range(n, lo, hi, g) for _ in range(len(x))]), fill, g)


def inpaint_center_white(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official `inpaint-center`: the H/2 x W/2 box at (H/4, W/4) filled white."""
    h, w = x.shape[-2:]
    m = torch.zeros(1, 1, h, w)
    m[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 1
    return masked_white(x, m)


__all__ = ["bicubic_down", "bicubic_kernel", "blur_matrix", "ddrm_blur", "freeform_mask",
           "inpaint_center_white", "inpaint_freeform", "inpaint_random_range", "jpeg", "random_mask_range",
           "separable", "sr_bicubic", "strided_matrix", "truncate_singulars"]
