"""ctmtool's metrics against torch-fidelity and torchmetrics on the same features (run by hand; not in CI).

    pip install --no-deps --target /tmp/torch_fidelity torch-fidelity==0.4.0     # kept out of the venv:
    python bench/xcheck_metrics.py --torch-fidelity /tmp/torch_fidelity          # its wheel ships a `tests`
                                                                                 # package
    python bench/xcheck_metrics.py --torch-fidelity /tmp/torch_fidelity --features \
        /work/shared/data/fd-cifar10/fd_a.pt \
        --images /path/to/real.npz --samples /path/to/fake.npz

Without --features: Gaussian features (seeded). With it: the network's pooled features, logits (classify)
and, where it has one, spatial head on two image sets. Prints a table of ctmtool's value and each library's,
and the largest relative difference; never asserts.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def _features(args):
    if args.features is None:
        g = torch.Generator().manual_seed(0)
        real = torch.randn(args.n, 64, generator=g, dtype=torch.float64)
        fake = torch.randn(args.n, 64, generator=g, dtype=torch.float64) * 1.2 + 0.3
        logits = torch.randn(args.n, 10, generator=g, dtype=torch.float64) * 3
        return real, fake, logits, None, None
    from ctmtool.data.images import load_images
    from ctmtool.metrics.features import make_extractor
    from ctmtool.metrics.fid import dataset_batches
    from ctmtool.metrics.suite import collect

    ex = make_extractor(args.features)
    heads = tuple(h for h in ("pool", "logits", "spatial") if ex.has_head(h))
    r = collect(dataset_batches(load_images(args.images), 256, args.n), ex, heads)
    f = collect(dataset_batches(load_images(args.samples), 256, args.n), ex, heads)
    return (torch.from_numpy(r.pool).double(), torch.from_numpy(f.pool).double(),
            torch.from_numpy(f.logits).double() if f.logits is not None else None, r, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-fidelity", required=True, help="folder holding the torch_fidelity package")
    ap.add_argument("--features", help="TorchScript feature network (default: Gaussian features)")
    ap.add_argument("--images", help="reference images (with --features)")
    ap.add_argument("--samples", help="sample images (with --features)")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    sys.path.insert(0, args.torch_fidelity)
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    from ctmtool.metrics.frechet import Moments, frechet_distance, kid
    from ctmtool.metrics.scores import inception_score, precision_recall

    real, fake, logits, _, _ = _features(args)
    n = min(len(real), len(fake))
    rows = []

    def fd(a, b):
        ma, mb = Moments(), Moments()
        ma.update(a.numpy())
        mb.update(b.numpy())
        return frechet_distance(*ma.result(), *mb.result())

    tf = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
    rows.append(("FID", fd(fake, real), {"torch-fidelity": tf["frechet_inception_distance"]}))
    size = min(1000, n)
    tf = kid_features_to_metric(fake, real, kid_subsets=1, kid_subset_size=n, kid_degree=3, kid_gamma=None,
                                kid_coef0=1, kid_kernel="poly", rng_seed=0, verbose=False)

    class Through(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    tm = KernelInceptionDistance(feature=Through(), subsets=1, subset_size=n, normalize=False)
    tm.update(real[:n, :, None, None], real=True)
    tm.update(fake[:n, :, None, None], real=False)
    rows.append((f"KID (1 subset of {n})", kid(fake[:n].numpy(), real[:n].numpy(), 1, n)[0],
                 {"torch-fidelity": tf["kernel_inception_distance_mean"],
                  "torchmetrics": float(tm.compute()[0])}))
    del size
    p, r = precision_recall(real, fake, 3)
    tp, tr = calculate_precision_recall_full(fake, real, neighborhood=3)
    rows.append(("precision (k=3)", p, {"torch-fidelity": tp}))
    rows.append(("recall (k=3)", r, {"torch-fidelity": tr}))
    if logits is not None:
        splits = 10 if len(logits) % 10 == 0 else 1
        ours = inception_score(logits, len(logits) // splits)[0]
        tf = isc_features_to_metric(logits, splits=splits, shuffle=False)
        tm = InceptionScore(feature=Through(), splits=1, normalize=False)
        tm.update(logits[:, :, None, None].float())
        rows.append((f"IS ({splits} splits)", ours, {"torch-fidelity": tf["inception_score_mean"]}))
        rows.append(("IS (1 split)", inception_score(logits, len(logits))[0],
                     {"torchmetrics": float(tm.compute()[0])}))
    print(f"{'metric':24s} {'ctmtool':>14s}  others (relative difference)")
    for name, ours, others in rows:
        cells = "  ".join(f"{k} {v:.8g} ({abs(v - ours) / max(abs(ours), 1e-30):.1e})"
                          for k, v in others.items())
        print(f"{name:24s} {ours:14.8g}  {cells}")
    print(f"n = {n}, features {args.features or 'Gaussian (64 dims), seed 0'}; numpy {np.__version__}, "
          f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
