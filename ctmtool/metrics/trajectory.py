"""How well a CTM's jump G(x_t, t, s) follows the true PF-ODE trajectory (the CTM paper's central claim)."""

from __future__ import annotations

import torch

from ctmtool.core.analytic import ExactTrajectory


@torch.no_grad()
def trajectory_error(model, exact: ExactTrajectory, x0: torch.Tensor, grid: torch.Tensor,
                     generator: torch.Generator | None = None, scale: float = 0.5) -> dict:
    """RMS of G_model(x_t, t, s) - G_exact(x_t, t, s) over every grid pair t > s, x_t = x0 + t n.

    Errors are per-sample Euclidean norms divided by sqrt(D) (per-dimension RMS), reported relative to the
    data scale `scale` (sigma_data). Returns the overall relative RMS, its worst pair and a per-t table."""
    levels = [float(v) for v in grid]
    d = x0[0].numel()
    per_pair, per_t = {}, {}
    total, count = 0.0, 0
    for i, t in enumerate(levels[:-1]):
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = x0 + t * noise
        sq_t, n_t = 0.0, 0
        for s in levels[i + 1:]:
            err = model.jump(x_t, t, s) - exact.jump(x_t, t, s)
            sq = float((err.reshape(len(x0), -1) ** 2).sum(1).mean()) / d
            per_pair[(t, s)] = (sq ** 0.5) / scale
            sq_t, n_t = sq_t + sq, n_t + 1
        per_t[t] = ((sq_t / n_t) ** 0.5) / scale
        total, count = total + sq_t, count + n_t
    worst = max(per_pair, key=per_pair.get)
    return {"rel_rms": (total / count) ** 0.5 / scale, "worst_pair": list(worst),
            "worst_rel_rms": per_pair[worst], "per_t": {f"{t:.4g}": round(v, 5) for t, v in per_t.items()},
            "pairs": count}
