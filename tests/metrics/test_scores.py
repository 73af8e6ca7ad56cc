"""IS, precision/recall and KID against independent implementations on the same inputs: torchmetrics 1.9 and
numpy transcriptions of ADM's evaluator (sony/ctm code/cm/evaluator.py). torch-fidelity is compared by
bench/metrics_crosscheck.py instead: its wheel installs a top-level `tests` package that shadows this one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmtool.metrics.frechet import kid
from ctmtool.metrics.scores import inception_score, manifold_radii, precision_recall


def _logits(n=600, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 2 + torch.arange(k) / k


def _adm_is(probs: np.ndarray, split_size: int) -> float:
    """ADM's compute_inception_score on softmax outputs (its loop, transcribed)."""
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_matches_adm():
    lg = _logits(650)  # 6 full splits and a short one, as ADM's loop makes them
    assert inception_score(lg.numpy(), split_size=100)[0] == \
        pytest.approx(_adm_is(torch.softmax(lg, 1).numpy(), 100), rel=1e-10)


def test_inception_score_matches_torchmetrics_on_one_split():
    from torchmetrics.image.inception import InceptionScore

    class Logits(torch.nn.Module):  # the "feature extractor" hands the logits through
        def forward(self, x):
            return x.flatten(1)

    lg = _logits(300).float()
    m = InceptionScore(feature=Logits(), splits=1, normalize=False)
    m.update(lg.reshape(300, 10, 1, 1))
    theirs, _ = m.compute()
    assert inception_score(lg, split_size=300)[0] == pytest.approx(float(theirs), rel=1e-5)


def test_inception_score_closed_forms():
    # confident and uniform over K classes: IS = K; the same prediction for every image: IS = 1
    k = 7
    confident = np.full((70, k), -50.0)
    confident[np.arange(70), np.arange(70) % k] = 50.0
    assert inception_score(confident)[0] == pytest.approx(k, rel=1e-9)
    assert inception_score(np.tile(np.arange(k, dtype=float), (20, 1)))[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_seed_shuffles_class_sorted_rows():
    k, per = 5, 40  # rows sorted by class, as a folder per class reads: every split of 40 is one class
    sorted_logits = np.repeat(np.eye(k) * 30, per, axis=0)
    assert inception_score(sorted_logits, per)[0] == pytest.approx(1.0, abs=1e-9)
    # splits of mixed classes after the shuffle
    assert inception_score(sorted_logits, per, seed=0)[0] > 0.8 * k
    assert inception_score(sorted_logits, len(sorted_logits), seed=0)[0] == pytest.approx(k, rel=1e-9)


def _feats(n, d=16, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def _adm_pr(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """ADM's ManifoldEstimator (one batch): squared distances, radii = k-th entry of a partition, `<=`."""
    def sq(a, b):
        return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0)

    r_radii = np.partition(sq(real, real), k, axis=1)[:, k]
    f_radii = np.partition(sq(fake, fake), k, axis=1)[:, k]
    d = sq(real, fake)  # (real, fake)
    precision = np.mean((d <= r_radii[:, None]).any(0))  # fake inside some real ball
    recall = np.mean((d <= f_radii[None, :]).any(1))  # real inside some fake ball
    return float(precision), float(recall)


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_precision_recall_matches_adm(shift):
    real, fake = _feats(300).double(), (_feats(250, shift=shift, seed=1) * 1.3).double()
    p, r = precision_recall(real, fake, k=3, row_batch=64)  # row batches smaller than n
    assert 0 < p < 1 and 0 < r < 1
    assert (p, r) == _adm_pr(real.numpy(), fake.numpy(), 3)


def test_precision_recall_invariants():
    real = _feats(200)
    assert precision_recall(real, real) == (1.0, 1.0)  # every point is the centre of its own ball
    far = _feats(200, shift=100.0)
    assert precision_recall(real, far) == (0.0, 0.0)
    # radii: squared distance to the 3rd other neighbour, from a brute-force sort
    d = torch.cdist(real.double(), real.double()) ** 2
    assert torch.allclose(manifold_radii(real, 3, row_batch=7), d.sort(1).values[:, 3], rtol=1e-6, atol=1e-6)


def test_kid_matches_torchmetrics_on_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Feats(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    a, b = _feats(120, 32).double(), _feats(120, 32, shift=0.3, seed=2).double()
    m = KernelInceptionDistance(feature=Feats(), subsets=1, subset_size=120, normalize=False)
    m.update(b.reshape(120, 32, 1, 1), real=True)
    m.update(a.reshape(120, 32, 1, 1), real=False)
    theirs, _ = m.compute()
    assert kid(a.numpy(), b.numpy(), subsets=1, subset_size=120)[0] == pytest.approx(float(theirs), rel=1e-9)
