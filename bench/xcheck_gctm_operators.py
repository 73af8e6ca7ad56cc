"""ctmtool's GCTM degradation operators against the official code's (1202kbs/GCTM corruption/), same inputs.

    git --git-dir=/work/.mirror/1202kbs+GCTM/repo archive HEAD | tar -x -C /tmp --one-top-level=gctm
    python bench/xcheck_gctm_operators.py --gctm /tmp/gctm [--size 64] [--n 4]

Imports the official `corruption` package from the checkout given by path (its `ipdb` import is stubbed) and
applies both implementations to the same random images in [-1, 1]: blur-uni, blur-gauss, sr2x/sr4x-bicubic,
sr4x-pool, inpaint-center. Prints the largest absolute difference of each; never asserts (run by hand).
"""

from __future__ import annotations

import argparse
import sys
import types

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gctm", required=True, help="a checkout of github.com/1202kbs/GCTM")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    sys.modules.setdefault("ipdb", types.SimpleNamespace(set_trace=lambda: None))
    sys.modules.setdefault("gdown", types.SimpleNamespace(download=None))
    sys.path.insert(0, args.gctm)
    from corruption import build_corruption  # the official code

    from ctmtool.gctm.degrade import make_degradation

    opt = types.SimpleNamespace(device="cpu", image_size=args.size)
    x = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print(f"{'operator':22s} {'max |ours - official|':>22s} {'mean |y - x|':>14s}")
    pairs = [(n, n)
             for n in ("blur-uni", "blur-gauss", "sr2x-bicubic", "sr4x-bicubic", "sr2x-pool", "sr4x-pool",
                              "inpaint-center")]
    # the operator (white fill)
    pairs = [(("center_white" if n == "inpaint-center" else n), n) for n, _ in pairs]
    pairs += [("blur_uni", "blur-uni"), ("blur_gauss", "blur-gauss")]  # ctmtool's per-channel separable blur
    for name, official_name in pairs:
        official = build_corruption(opt, official_name)
        theirs = official(x.clone())
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        ours = make_degradation(name)(x.clone())
        print(f"{name:22s} {float((ours - theirs.reshape(ours.shape)).abs().max()):22.3e} "
              f"{float((ours - x).abs().mean()):14.4f}")
    print(f"images {args.n} x 3 x {args.size} x {args.size}, uniform in [-1, 1], seed 0; torch "
          f"{torch.__version__}")


if __name__ == "__main__":
    main()
