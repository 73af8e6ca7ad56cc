"""Full-reference metrics of restored or translated images against their references: PSNR, SSIM, LPIPS.

As the GCTM code's `eval_inverse` (1202kbs/GCTM utils.py) computes them, per image and then averaged:
- PSNR: on images quantised to uint8, 10 log10(255^2 / MSE) (skimage's peak_signal_noise_ratio, data_range
  255).
- SSIM (Wang et al. 2004): images clamped to [-1, 1] and mapped to [0, 1], 11 x 11 Gaussian window of
  sigma 1.5, K1 = 0.01, K2 = 0.03, valid region only, averaged over pixels and channels (pytorch_msssim's
  `ssim`, which GCTM calls; here piq's `ssim`, the same definition, checked against scikit-image).
- LPIPS: ctmtool's paper LPIPS (VGG16 with average pooling, piq; the CTM paper's), whose two weight files must
  be present (`losses.lpips.weight_files`). GCTM's tables use AlexNet LPIPS (the `lpips` package): its
  figures are not the same numbers.
Images are float NCHW in [-1, 1] (ctmtool's convention); references must have the same shape.
"""

from __future__ import annotations

import torch

from ctmtool.data.base import to_uint8_images
from ctmtool.errors import UserError

RESTORATION_METRICS = ("psnr", "ssim", "lpips")
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5


def _check(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape or x.ndim != 4:
        raise UserError(f"outputs {tuple(x.shape)} and references {tuple(ref.shape)} differ in shape; give "
                        "one reference image of the output's size per output")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8-quantised images; +inf where an image equals its reference."""
    _check(x, ref)
    a, b = to_uint8_images(x).double(), to_uint8_images(ref).double()
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM in [0, 1] space (piq.ssim with GCTM's window; images below 11 pixels are refused)."""
    _check(x, ref)
    if min(x.shape[-2:]) < SSIM_KERNEL:
        raise UserError(f"SSIM needs images of at least {SSIM_KERNEL}x{SSIM_KERNEL} pixels, got "
                        f"{x.shape[-2]}x{x.shape[-1]}")
    piq = _piq()
    a = ((x.clamp(-1, 1) + 1) / 2).double()
    b = ((ref.clamp(-1, 1) + 1) / 2).double()
    return piq.ssim(a, b, kernel_size=SSIM_KERNEL, kernel_sigma=SSIM_SIGMA, data_range=1.0, reduction="none",
                    downsample=False, k1=0.01, k2=0.03)


def _piq():
    try:
        import piq
    except ImportError:
        raise UserError("SSIM and LPIPS need the piq package: pip install 'ctmtool[metrics]'") from None
    return piq


def lpips(x: torch.Tensor, ref: torch.Tensor, weights: str | None = None, batch: int = 64) -> torch.Tensor:
    """Per-image LPIPS (ctmtool's paper LPIPS: VGG16, piq); a UserError names missing weight files."""
    _check(x, ref)
    from ctmtool.losses.lpips import PaperLPIPS

    net = PaperLPIPS.from_files(weights)
    with torch.no_grad():
        return torch.cat([net(x[i:i + batch].float(), ref[i:i + batch].float()).reshape(-1)
                          for i in range(0, len(x), batch)])


def restoration_metrics(x: torch.Tensor, ref: torch.Tensor, metrics: tuple[str, ...] = ("psnr", "ssim"),
                        lpips_weights: str | None = None) -> dict:
    """Means (and per-image lists under `per_image`) of the asked metrics of `x` against `ref`."""
    fns = {"psnr": psnr, "ssim": ssim, "lpips": lambda a, b: lpips(a, b, lpips_weights)}
    out, per = {}, {}
    for m in metrics:
        v = fns[m](x.cpu(), ref.cpu()).double()
        finite = v[torch.isfinite(v)]
        out[m] = float(finite.mean()) if len(finite) else float("inf")
        per[m] = [round(float(e), 6) for e in v]
        if m == "psnr" and len(finite) < len(v):
            # images equal to their reference (PSNR infinite)
            out["psnr_identical"] = int(len(v) - len(finite))
    return {**out, "per_image": per}


def parse_restoration_metrics(spec: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip().lower() for s in spec.split(",") if s.strip()))
    bad = [n for n in names if n not in RESTORATION_METRICS]
    if bad or not names:
        raise UserError(f"unknown metric {', '.join(bad) or repr(spec)}; choose among "
                        f"{','.join(RESTORATION_METRICS)}")
    return names


__all__ = ["RESTORATION_METRICS", "lpips", "parse_restoration_metrics", "psnr", "restoration_metrics", "ssim"]
