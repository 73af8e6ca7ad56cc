"""GCTM's training times as the reference draws them (1202kbs/GCTM discretizations.py 35-56, 58-94;
train_gctm.py 94-95, 101-105).

(t, u, s) on the training grid (ascending there: ts[0] = 0 ... ts[n] = 1; ctmtool's grids run from 1 down to
0, so index i here is n - i there):
- s: index j in 0..n-1 with probability proportional to 1 - ts[j] (low times favoured);
- t: lambda ~ Beta(a, b) (its --t_ctm_dists, 1.2 2 by default), t' = lambda + (1 - lambda) ts[s]; the index
  is the nearest grid point's plus one (its `discretize` compares the distance, not the point, with t', so it
  moves up by one whenever the distance is below t', i.e. almost always), at most n and at least s + 1;
- u: uniform over s .. t - 1 (`u_dlt` in 1 .. t - s).
The solver then takes t - u steps from t to u: the count differs per sample (ctmtool's CTM sampler shares one
k per batch, with P(k) ~ k).

DSM times (`sample_sm_times`): an index in 1..N of the fine grid (N = disc_steps, 1024) with the mass a
continuous distribution gives each interval (ts[i-1], ts[i]]: the continuous draw snapped up to the grid.

Curriculum (`double_iter`): the training grid has min(N, n0 * 2^(step // double_iter)) steps (n0 its
--init_steps), each a subsample of the fine grid.
"""

from __future__ import annotations

import numpy as np
import torch


def official_indices(batch: int, grid_desc: torch.Tensor, beta: tuple[float, float] = (1.2, 2.0),
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """(t_idx, u_idx, s_idx) into the decreasing grid `grid_desc` (1 ... 0), t < u <= s, drawn as the
    reference."""
    ts = grid_desc.double().cpu().flip(0)  # ascending, as the reference's get_ts
    n = ts.numel() - 1
    s_pdf = 1.0 - ts[:-1]
    s_idx = torch.multinomial(s_pdf / s_pdf.sum(), batch, replacement=True, generator=generator)
    seed = int(torch.randint(2**62, (), generator=generator))  # Beta draws from NumPy, seeded from the stream
    lam = torch.from_numpy(np.random.default_rng(seed).beta(beta[0], beta[1], size=batch))
    t_temp = lam + (1 - lam) * ts[s_idx]
    dist, nearest = (t_temp[:, None] - ts[None]).abs().min(dim=1)
    t_idx = torch.where(dist < t_temp, (nearest + 1).clamp(max=n), nearest)
    t_idx = torch.maximum(t_idx, s_idx + 1)
    u_rng = (t_idx - s_idx).double()
    u_dlt = torch.minimum((torch.rand(batch, generator=generator, dtype=torch.float64) * u_rng).floor(),
                          u_rng - 1)
    u_idx = t_idx - u_dlt.long() - 1
    return n - t_idx, n - u_idx, n - s_idx  # into the decreasing grid


def snap_up(t: torch.Tensor, fine_desc: torch.Tensor) -> torch.Tensor:
    """Each t in (0, 1] moved up to the first point >= t of the decreasing grid `fine_desc` (t = 0
    excluded)."""
    asc = fine_desc.double().flip(0).to(t.device)
    idx = torch.searchsorted(asc, t.double().contiguous()).clamp(1, asc.numel() - 1)
    return asc[idx].to(t.dtype)


def curriculum_steps(base_steps: int, step: int, double_every: int | None, fine_steps: int) -> int:
    """Training-grid steps at optimiser step `step`: base_steps doubled every `double_every` steps, at most
    fine_steps."""
    if double_every is None:
        return base_steps
    return min(fine_steps, base_steps * 2 ** (step // double_every))
