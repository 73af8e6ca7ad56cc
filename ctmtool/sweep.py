"""NFE sweep: sample a model at several NFE and gamma values and score each (the CTM paper's Fig. 6 claim:
quality does not degrade as NFE grows)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ctmtool.sampling import generate


def nfe_sweep(model, nfes: list[int], gammas: list[float], score: Callable[[torch.Tensor], float], n: int,
              seed: int = 0, batch: int | None = None, device: torch.device | str = "cpu",
              teacher_steps: list[int] | None = None, progress: Callable[[str], None] | None = None,
              fast: bool = True) -> list[dict]:
    """One row per (nfe, gamma): the score of `n` samples (same seeds in every row). Teacher models are
    swept over Heun steps instead (`teacher_steps`, NFE = 2 steps - 1). `batch` None: the preset's, or on the
    CPU the batch and traced solve `ctmtool.fastpath.choose_sampling` picks (`fast`; the choice goes to
    `progress`)."""
    from ctmtool.fastpath import choose_and_build

    rows = []
    configs = ([("gamma", nfe, g) for nfe in nfes for g in gammas] if model.is_trajectory
               else [("heun", steps, 0.0) for steps in (teacher_steps or [2, 4, 8, 18])])
    for solver, k, gamma in configs:
        if solver == "gamma" and k == 1 and gamma != gammas[0]:
            continue  # with one jump gamma changes nothing
        t0 = time.time()
        kw = dict(solver=solver, nfe=k, gamma=gamma) if solver == "gamma" else dict(solver="heun", steps=k)
        size, program = choose_and_build(model, device, n, batch, kw, fast, progress)
        x = torch.cat([b.cpu() for b, _ in generate(model, n, seed=seed, batch=size, device=device, program=program,
                                                    **kw)])
        nfe = k if solver == "gamma" else 2 * k - 1
        row = {"solver": solver, "nfe": nfe, "gamma": gamma if solver == "gamma" else None,
               "score": score(x), "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        if progress is not None:
            progress(f"nfe {nfe} gamma {row['gamma']}: {row['score']:.5g}")
    return rows
