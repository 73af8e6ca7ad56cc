"""Sample-quality scores shared by the NFE sweep, training evaluation and the measured examples.

- `logp`: mean log-density of samples under the true Gaussian mixture (toy presets): exact, no features.
- `fd-pixels`: Frechet distance between generated and real images in pixel space (0..255 values), for
  small images such as the 8x8 digits where a pixel-space Gaussian is a fair summary.
- `fd`: Frechet distance in the feature space of a TorchScript network (e.g. fd_a.pt) or Inception.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ctmtool.core.models import analytic_model, analytic_problem
from ctmtool.data.base import Dataset, to_uint8_images
from ctmtool.errors import UserError
from ctmtool.metrics.features import make_extractor
from ctmtool.metrics.fid import compute_stats, fid_from_stats, reference_stats
from ctmtool.metrics.frechet import frechet_distance


def pixel_stats(images_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = images_uint8.reshape(len(images_uint8), -1).double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def pixel_fd_to(reference_uint8: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """fd(images_uint8) -> Frechet distance in pixel space to the fixed reference images."""
    mu_r, s_r = pixel_stats(reference_uint8)

    def fd(images_uint8: torch.Tensor) -> float:
        mu, s = pixel_stats(images_uint8)
        return float(frechet_distance(mu, s, mu_r, s_r))

    return fd


def make_scorer(metric: str, preset=None, reference: Dataset | None = None, features: str | None = None,
                ref: str | None = None,
                device: torch.device | str = "cpu") -> tuple[str, Callable[[torch.Tensor], float], dict]:
    """(name, score(x) -> float, baseline info). Lower is better for fd metrics, higher for logp."""
    if metric == "logp":
        problem = analytic_problem(preset)
        if problem is not None:
            raise UserError(problem)
        gmm = analytic_model(preset).net
        true = gmm.sample(1_000_000, torch.Generator().manual_seed(0))  # standard error ~0.001 nats
        base = {"true_samples_logp": float(gmm.log_prob(true).mean())}
        return "mean log p (nats, higher is better)", lambda x: float(gmm.log_prob(x.cpu()).mean()), base
    if metric == "fd-pixels":
        if reference is None or not reference.is_image:
            raise UserError("fd-pixels needs a reference image data set (`ref` or the preset's data)")
        fd_u8 = pixel_fd_to(reference.values)
        return ("Frechet distance in pixel space (lower is better)",
                lambda x: fd_u8(to_uint8_images(x.cpu())), {"n_ref": len(reference)})
    if metric == "fd":

        if features is None or ref is None:
            raise UserError("metric fd needs `features` (e.g. fd_a.pt or inception) and `ref` (reference "
                            "images or stats)")
        extractor = make_extractor(features, device)
        ref_stats = reference_stats(ref, extractor, device)

        def fd(x: torch.Tensor) -> float:
            stats = compute_stats([to_uint8_images(x)], extractor, device)
            return float(fid_from_stats(stats, ref_stats)["fid"])

        return f"Frechet distance in {extractor.name} features (lower is better)", fd, {"n_ref": ref_stats.n}
    raise UserError(f"unknown metric {metric!r}; use logp (Gaussian-mixture presets), fd-pixels or fd")
