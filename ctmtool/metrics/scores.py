"""Inception Score and k-NN precision/recall, with the conventions of ADM's evaluator (Dhariwal & Nichol 2021;
sony/ctm code/cm/evaluator.py), which the CTM paper's ImageNet-64 table uses.

- Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), computed on consecutive chunks of
  `split_size` images (5000: ADM's evaluator; 10 splits at 50,000 images, as improved-gan) and averaged;
  `ctmtool metrics` shuffles the rows first (seeded), so a class-sorted folder does not give one-class splits.
- Precision and recall (Kynkaanniemi et al. 2019): the manifold of a feature set is the union of balls
  around each vector with radius its distance to its k-th nearest neighbour in the same set (k = 3);
  precision is the fraction of sample features inside the reference manifold, recall the fraction of
  reference features inside the sample manifold. A point on a ball's boundary is inside (`<=`).
- sFID (Nash et al. 2021) is the Frechet distance of spatial features (`frechet.frechet_distance` on the
  `spatial` head of a feature network); KID is `frechet.kid`.

These are a few lines each; the libraries that compute them (torch-fidelity, torchmetrics) differ from
ADM's conventions (torch-fidelity shuffles before splitting into 10 parts; torchmetrics shuffles at
random), so they serve as the independent checks in tests/metrics/test_scores.py instead.
"""

from __future__ import annotations

import numpy as np
import torch

IS_SPLIT_SIZE = 5000  # ADM's evaluator: compute_inception_score(activations, split_size=5000)
PR_NEIGHBOURS = 3  # ADM's evaluator: ManifoldEstimator(nhood_sizes=(3,))
ROW_BATCH = 4096  # rows of the pairwise-distance matrix held at once


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = IS_SPLIT_SIZE,
                    seed: int | None = None) -> tuple[float, float]:
    """(mean, std) over chunks of `split_size` consecutive rows of exp(mean_x KL(softmax(l_x) || mean
    softmax)).

    `logits`: (N, K) class logits (or log-probabilities: the softmax is the same). float64 throughout.
    `seed`: shuffle the rows first (numpy default_rng(seed).permutation), so that images stored in class
    order (a folder per class) do not make single-class splits; None keeps the order (ADM's evaluator).
    """
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if seed is not None:
        lg = lg[torch.from_numpy(np.random.default_rng(seed).permutation(len(lg)))]
    if lg.ndim != 2 or lg.shape[0] < 1 or lg.shape[1] < 2:
        raise ValueError(f"inception_score needs (N, K) logits with K >= 2, got {tuple(lg.shape)}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    logp = torch.log_softmax(lg, dim=1)
    scores = []
    for lo in range(0, lg.shape[0], split_size):
        part = logp[lo:lo + split_size]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # log mean_x p(y|x)
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _as_tensor(x: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32,
                           device=device)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (rows of a) x (rows of b), in float64 to keep ties exact enough."""
    a, b = a.double(), b.double()
    return ((a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)).clamp_min(0)


def manifold_radii(feats: torch.Tensor, k: int = PR_NEIGHBOURS, row_batch: int = ROW_BATCH) -> torch.Tensor:
    """Squared distance of each row to its k-th nearest other row (the row itself is its 0-th neighbour)."""
    if len(feats) <= k:
        raise ValueError(f"a k = {k} nearest-neighbour manifold needs more than {k} feature vectors, got "
                         f"{len(feats)}")
    return torch.cat([_sq_dist(feats[lo:lo + row_batch], feats).kthvalue(k + 1, dim=1).values
                      for lo in range(0, len(feats), row_batch)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, row_batch: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius^2 = radii)."""
    return torch.cat([(_sq_dist(points[lo:lo + row_batch], centres) <= radii).any(1)
                      for lo in range(0, len(points), row_batch)])


def precision_recall(ref: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor,
                     k: int = PR_NEIGHBOURS, device: torch.device | str = "cpu",
                     row_batch: int = ROW_BATCH) -> tuple[float, float]:
    """(precision, recall) of `samples` against `ref`, both (N, D) features, with k-NN manifolds."""
    r, s = _as_tensor(ref, device), _as_tensor(samples, device)
    if r.ndim != 2 or s.ndim != 2 or r.shape[1] != s.shape[1]:
        raise ValueError(f"feature arrays must be (N, D) with the same D, got {tuple(r.shape)} and "
                         f"{tuple(s.shape)}")
    r_radii, s_radii = manifold_radii(r, k, row_batch), manifold_radii(s, k, row_batch)
    precision = _inside(s, r, r_radii, row_batch).double().mean()
    recall = _inside(r, s, s_radii, row_batch).double().mean()
    return float(precision), float(recall)


__all__ = ["IS_SPLIT_SIZE", "PR_NEIGHBOURS", "inception_score", "manifold_radii", "precision_recall"]
