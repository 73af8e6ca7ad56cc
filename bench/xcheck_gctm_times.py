"""Cross-check GCTM's training times against the official sampler (1202kbs/GCTM discretizations.py), by hand.

    python bench/xcheck_gctm_times.py PATH_TO_GCTM_CHECKOUT [N]

Draws N (default 400,000) triples (t, u, s) from the official `EDM_N2I.sample_ctm_times` (Edges->Shoes
settings: 1024-step grid, 4 training steps, smax 500, t_ctm_dists 1.2 2) and from ctmtool's
`gctm.times.official_indices` on ctmtool's 5-point grid, and reports the total variation between the two
empirical distributions of triples, beside the sampling noise floor (the total variation between two
independent official draws of the same size) and ctmtool's former sampler (CTM's, K = 4). Then the DSM times:
the official `sample_sm_times` with beta_3_1 on the 1024-step grid against ctmtool's
`GCTMLoss.sample_dsm_times` (pure beta_3_1 snapped up to the same grid) and against its former 25 %
training-grid mixture. The official code calls `.cuda()`; it is made an identity here. Needs scipy. Not for
CI.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch


def tv(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def main(checkout: str, n: int) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official sampler moves everything to the GPU
    from discretizations import EDM_N2I

    from ctmtool.core.schedules import gctm_times, sample_ctm_indices
    from ctmtool.gctm.times import official_indices
    from ctmtool.losses.distances import SquaredL2
    from ctmtool.train.gctm_objective import GCTMLoss

    smin, smax, rho, fine, steps = 0.002, 500.0, 7.0, 1024, 4
    disc = EDM_N2I(fine, smin=smin, smax=smax, rho=rho, t_sm_dists=["beta_3_1"], t_ctm_dists=[1.2, 2])
    grid = gctm_times(steps + 1, smin, smax, rho)
    ts = disc.get_ts(steps)
    print(f"official code: {checkout}; grid (ascending) official {[round(float(v), 6) for v in ts]}, "
          f"ctmtool {[round(float(v), 6) for v in grid.flip(0)]}; N = {n} draws each; torch "
          f"{torch.__version__}")

    def official(seed: int) -> Counter:
        torch.manual_seed(seed)
        import numpy as np
        np.random.seed(seed)
        t_i, s_i, u_i = disc.sample_ctm_times(n, steps)[:3]
        return Counter(zip((steps - t_i).tolist(), (steps - u_i).tolist(), (steps - s_i).tolist(),
                           strict=True))

    off_a, off_b = official(1), official(2)
    t_i, u_i, s_i = official_indices(n, grid, (1.2, 2.0), torch.Generator().manual_seed(3))
    mine = Counter(zip(t_i.tolist(), u_i.tolist(), s_i.tolist(), strict=True))
    g = torch.Generator().manual_seed(4)
    old = Counter()
    for _ in range(n // 64):  # batches of 64 (Edges->Shoes' batch): one k per batch, so many batches
        a, b, c, _k = sample_ctm_indices(64, steps + 1, steps, generator=g)
        old.update(zip(a.tolist(), b.tolist(), c.tolist(), strict=True))
    p1 = {name: sum(v for k, v in c.items() if k[0] == 0) / sum(c.values())
          for name, c in (("official", off_a), ("ctmtool", mine), ("former", old))}
    print(f"(t, u, s) triples, total variation: ctmtool vs official {tv(mine, off_a):.4f}; noise floor "
          f"(official vs official) {tv(off_b, off_a):.4f}; former CTM sampler vs official "
          f"{tv(old, off_a):.4f}")
    print(f"  P(t = 1): official {p1['official']:.4f}, ctmtool {p1['ctmtool']:.4f}, former "
          f"{p1['former']:.4f}")

    fine_grid = gctm_times(fine + 1, smin, smax, rho)
    full = disc.get_ts(fine)

    def official_sm(seed: int) -> Counter:
        torch.manual_seed(seed)
        import numpy as np
        np.random.seed(seed)
        _, t = disc.sample_sm_times(n, fine)
        return Counter(torch.searchsorted(full, t).tolist())

    def ours(fraction: float, fine_grid, seed: int) -> Counter:
        loss = GCTMLoss(grid, steps, SquaredL2(), dsm_times="beta_3_1", grid_fraction=fraction,
                        fine_grid=fine_grid)
        t = loss.sample_dsm_times(n, torch.Generator().manual_seed(seed)).double()
        # the nearest official point (float32 vs float64 grids)
        mids = (full.double()[1:] + full.double()[:-1]) / 2
        return Counter(torch.searchsorted(mids, t).tolist())

    sm_a, sm_b = official_sm(5), official_sm(6)
    print(f"DSM times (beta_3_1, index on the 1024-step grid), total variation: ctmtool vs official "
          f"{tv(ours(0.0, fine_grid, 7), sm_a):.4f}; noise floor {tv(sm_b, sm_a):.4f}; former (continuous, "
          f"25 % from the 5-point grid) {tv(ours(0.25, None, 8), sm_a):.4f}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python bench/xcheck_gctm_times.py PATH_TO_GCTM_CHECKOUT [N]")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 400_000)
