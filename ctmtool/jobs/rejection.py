"""Classifier-rejection sampling (sony/ctm code/classifier_rejection.py): draw (1 + ratio) times the samples
wanted, score each with a classifier's log p(y | x), and keep the best-scored ones of every class.

The official script scores ImageNet samples with ADM's noise-conditional classifier at t = 0.002 and keeps, of
the first 50 (1 + ratio) samples of each class, the 50 with the highest log-probability of their class. Here
the classifier is a TorchScript file with `classify(x) -> (B, K)` logits on uint8 images (the interface of
`ctmtool metrics`' feature networks, e.g. fd_a.pt); for a conditional model the score is log p(label | x),
for an unconditional one max_y log p(y | x) (class = the classifier's guess). Each class keeps
ceil(count / (1 + ratio)) of its samples, best first; the survivors are then trimmed to `keep` overall by
score and returned in their original order.
"""

from __future__ import annotations

import math

import torch

from ctmtool.data.base import to_uint8_images
from ctmtool.errors import UserError


def classifier_scores(x: torch.Tensor, labels: torch.Tensor | None, classify, batch: int = 256
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, class) per sample: log p(label | x), or the top class and its log-probability when
    unlabelled."""
    logp = torch.cat([torch.log_softmax(classify(to_uint8_images(x[i:i + batch])).float().cpu(), -1)
                      for i in range(0, len(x), batch)])
    if labels is None:
        best = logp.max(1)
        return best.values, best.indices
    labels = labels.cpu().long()
    if int(labels.max()) >= logp.shape[1]:
        raise UserError(f"the classifier has {logp.shape[1]} classes but the samples have label "
                        f"{int(labels.max())}; give a classifier of the model's classes")
    return logp[torch.arange(len(x)), labels], labels


def keep_best(scores: torch.Tensor, classes: torch.Tensor, ratio: float, keep: int) -> torch.Tensor:
    """Indices (ascending) of the samples kept: per class the best ceil(count / (1 + ratio)), then the best
    `keep`."""
    if ratio < 0:
        raise UserError(f"the rejection ratio must be >= 0, got {ratio}")
    survivors = []
    for c in classes.unique():
        idx = (classes == c).nonzero().flatten()
        k = math.ceil(len(idx) / (1 + ratio))
        survivors.append(idx[scores[idx].argsort(descending=True)[:k]])
    s = torch.cat(survivors)
    s = s[scores[s].argsort(descending=True)[:keep]]
    return s.sort().values


def draw_count(n: int, ratio: float) -> int:
    """How many samples to draw so that `n` remain: ceil(n (1 + ratio))."""
    return math.ceil(n * (1 + ratio))


__all__ = ["classifier_scores", "draw_count", "keep_best"]
