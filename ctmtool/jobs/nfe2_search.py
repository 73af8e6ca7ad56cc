"""The intermediate level of two-step (NFE 2) sampling, found by ternary search over a grid (the CTM code's
scripts/ternary_search.py, Kim-Dongjun/ctm-cifar10; after consistency models' search for their two-step time).

Levels are the model's own `steps`-point grid (Karras spacing for a CTM: index i has
(s_max^(1/rho) + i / (steps - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho, as the official `ts` indices); NFE 2
samples the schedule (grid[0], grid[p], grid[-1]) and the search looks for the index p with the lowest score
(or the highest, for scores where higher is better), evaluating each index at most once. The official
search returns, when the interval has shrunk to two or three indices, the last pair of probes m1/m2 instead of
the better end of the interval; here the best of the remaining indices is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ctmtool.errors import UserError


def ternary_search(score: Callable[[int], float], left: int, right: int, lower_is_better: bool = True,
                   log: Callable[[str], None] | None = None) -> tuple[int, dict[int, float]]:
    """argmin (or argmax) of a unimodal `score` over the integers [left, right]; (best, every evaluated
    score)."""
    if right < left:
        raise ValueError(f"empty interval [{left}, {right}]")
    seen: dict[int, float] = {}

    def f(i: int) -> float:
        if i not in seen:
            seen[i] = float(score(i))
            if log is not None:
                log(f"index {i}: {seen[i]:.6g}")
        return seen[i] if lower_is_better else -seen[i]

    while right - left >= 3:
        m1 = int(left + (right - left) / 3.0)
        m2 = int(right - (right - left) / 3.0)
        if f(m1) < f(m2):
            right = m2
        else:
            left = m1
    best = min(range(left, right + 1), key=f)
    return best, dict(sorted(seen.items()))


def search_nfe2(model, sample_score: Callable[[torch.Tensor], float], steps: int = 40, gamma: float = 0.0,
                lower_is_better: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Ternary search of NFE 2's intermediate grid index; `sample_score(schedule) -> score` samples and
    scores."""
    if not model.is_trajectory:
        raise UserError("the NFE-2 search is for a CTM or a GCTM (a teacher samples with Heun steps)")
    if steps < 3:
        raise UserError(f"the NFE-2 search needs a grid of at least 3 levels, got {steps}")
    grid = model.net.default_schedule(steps - 1)
    levels = [float(v) for v in grid]

    def schedule(i: int) -> torch.Tensor:
        return torch.tensor([levels[0], levels[i], levels[-1]], dtype=torch.float64)

    best, seen = ternary_search(lambda i: sample_score(schedule(i)), 1, steps - 2, lower_is_better, log)
    return {"best_index": best, "best_level": levels[best], "best_score": seen[best], "steps": steps,
            "gamma": gamma,
            "evaluated": [{"index": i, "level": levels[i], "score": v} for i, v in seen.items()]}


__all__ = ["search_nfe2", "ternary_search"]
