"""NFE sweep: sample a model at several NFE and gamma values and score each (the CTM paper's Fig. 6 claim:
quality does not degrade as NFE grows)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ctmtool.core.sampling import generate
from ctmtool.jobs.plan import plan_sampling


def nfe_sweep(model, nfes: list[int], gammas: list[float], score: Callable[[torch.Tensor], float], n: int,
              seed: int = 0, batch: int | None = None, device: torch.device | str = "cpu",
              teacher_steps: list[int] | None = None, progress: Callable[[str], None] | None = None,
              fast: bool = True) -> list[dict]:
    """One row per (nfe, gamma): the score of `n` samples (same seeds in every row). Teacher models are
    swept over Heun steps instead (`teacher_steps`, NFE = 2 steps - 1). `batch` None: the preset's, or on the
    CPU the batch and traced solve `ctmtool.core.fastpath.fast_plan` picks (`fast`; the choice goes to
    `progress`)."""
    from ctmtool.core.fastpath import fast_plan

    rows = []
    configs = ([("gamma", nfe, g) for nfe in nfes for g in gammas] if model.is_trajectory
               else [("heun", steps, 0.0) for steps in (teacher_steps or [2, 4, 8, 18])])
    configs = [(solver, k, gamma) for solver, k, gamma in configs
               if not (solver == "gamma" and k == 1 and gamma != gammas[0])]  # with one jump gamma changes nothing
    plans = [plan_sampling(model, solver=solver, nfe=k, gamma=gamma, noise="edm", batch=batch) if solver == "gamma"
             else plan_sampling(model, solver=solver, steps=k, noise="edm", batch=batch)
             for solver, k, gamma in configs]  # every setting checked before any sampling
    for (solver, k, gamma), plan in zip(configs, plans, strict=True):
        t0 = time.time()
        plan, program = fast_plan(model, plan, device, n, batch is not None, fast, progress)
        x = torch.cat([b.cpu() for b, _ in generate(model, n, plan, seed=seed, device=device, program=program)])
        nfe = k if solver == "gamma" else 2 * k - 1
        row = {"solver": solver, "nfe": nfe, "gamma": gamma if solver == "gamma" else None,
               "score": score(x), "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        if progress is not None:
            progress(f"nfe {nfe} gamma {row['gamma']}: {row['score']:.5g}")
    return rows
