"""Cross-check the `latent` coupling against the official one (1202kbs/GCTM couplings.py 118-130), by hand.

    python bench/xcheck_latent_coupling.py PATH_TO_GCTM_CHECKOUT [--n 512] [--batch 128]

The official `LatentCoupling` reads its class means and stds from `data_stats/cifar10.pt` (keys `mus`,
`stds`; the file is not in the repository, nor the code that wrote it). This script writes that file from
ctmtool's `class_statistics` of a labelled data set (digits, the only one shipped; 10 classes), runs the
official coupling on a batch (X0, y0) under torch.manual_seed and ctmtool's `LatentCoupling.pair` under the
same seed, and compares x1 item for item (the official call then shuffles the batch with randperm; the same
permutation is applied to ctmtool's pairs). The pairs' moments are tested against closed forms in
tests/gctm/test_latent_coupling.py. Tensor.cuda is the identity when no GPU is present;
the official file's `munch` and `corruption` imports (only its inverse coupling uses them) are stubbed.
Not for CI (needs the official code).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

from ctmtool.data.digits import load_digits
from ctmtool.gctm.couplings import LatentCoupling, class_statistics


def official_coupling(checkout: str, mus: torch.Tensor, stds: torch.Tensor, batch: int):
    """The official LatentCoupling(batch) with `mus`/`stds` written to data_stats/cifar10.pt in a temp dir."""
    sys.modules.setdefault("munch", types.SimpleNamespace(munchify=lambda d: d))
    sys.modules.setdefault("corruption", types.SimpleNamespace(build_corruption=None))
    sys.path.insert(0, str(Path(checkout).resolve()))
    import couplings as official

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self  # the official code calls .cuda() unconditionally
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            Path("data_stats").mkdir()
            torch.save({"mus": mus, "stds": stds}, "data_stats/cifar10.pt")
            return official.get_coupling("latent", batch)
        finally:
            os.chdir(here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    ds = load_digits("train")
    x_all, y_all = ds.get(torch.arange(len(ds)))
    means, stds = class_statistics(x_all, y_all, 10)
    ref = official_coupling(args.checkout, means.to(dev), stds.to(dev), args.batch)
    print(f"data: {ds.name}, {len(ds)} items, class statistics {tuple(means.shape)}; device {dev}")
    same = torch.equal(ref.mus.cpu(), means) and torch.equal(ref.stds.cpu(), stds)
    print(f"official mus/stds equal ctmtool's: {same}")

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:args.n]
    x0, y0 = x_all[idx].to(dev), y_all[idx].to(dev)
    torch.manual_seed(123)
    ox0, ox1 = ref((x0, y0), (None, None))
    torch.manual_seed(123)
    torch.randn_like(x0)
    perm = torch.randperm(x0.shape[0])[:args.batch]  # the official shuffle, drawn after its noise
    mine = LatentCoupling(means.to(dev), stds.to(dev))
    torch.manual_seed(123)
    a, b = mine.pair(x0, y0, None)  # generator None: the global stream, as the official randn_like
    print(f"x0 equal after the official shuffle: {torch.equal(a[perm.to(dev)], ox0)}")
    diff = float((b[perm.to(dev)] - ox1).abs().max())
    print(f"x1 max |ctmtool - official| over {args.batch} items: {diff:.3g}")


if __name__ == "__main__":
    main()
