"""NFE sweep: sample a model at several NFE and gamma values and score each (the CTM paper's Fig. 6 claim:
quality does not degrade as NFE grows)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ctmtool.checkpoint import atomic_write
from ctmtool.core.sampling import generate
from ctmtool.data import load_dataset, load_images
from ctmtool.jobs.nfe2_search import search_nfe2
from ctmtool.jobs.plan import plan_sampling
from ctmtool.jobs.plots import line_chart, save_png
from ctmtool.metrics.quality import make_scorer


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
    plans = [plan_sampling(model, solver=solver, nfe=k, gamma=gamma, noise="edm", batch=batch)
             if solver == "gamma"
             else plan_sampling(model, solver=solver, steps=k, noise="edm", batch=batch)
             for solver, k, gamma in configs]  # every setting (nfe >= 1, gamma in [0, 1]) checked before any
                                               # sampling
    keep = [not (solver == "gamma" and k == 1 and gamma != gammas[0]) for solver, k, gamma in configs]
    configs = [c for c, k in zip(configs, keep, strict=True) if k]  # with one jump gamma changes nothing
    plans = [p for p, k in zip(plans, keep, strict=True) if k]
    for (solver, k, gamma), plan in zip(configs, plans, strict=True):
        t0 = time.time()
        plan, program = fast_plan(model, plan, device, n, batch is not None, fast, progress)
        x = torch.cat([b.cpu()
                       for b, _ in generate(model, n, plan, seed=seed, device=device, program=program)])
        nfe = k if solver == "gamma" else 2 * k - 1
        row = {"solver": solver, "nfe": nfe, "gamma": gamma if solver == "gamma" else None,
               "score": score(x), "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        if progress is not None:
            progress(f"nfe {nfe} gamma {row['gamma']}: {row['score']:.5g}")
    return rows


def sweep_series(model, rows: list[dict]) -> dict[str, list]:
    """The plot's lines: score against NFE, one line per gamma (per solver for a teacher)."""
    series: dict[str, list] = {}
    for r in rows:
        key = f"gamma {r['gamma']:g}" if r["gamma"] is not None else r["solver"]
        series.setdefault(key, []).append((r["nfe"], r["score"]))
    if model.is_trajectory:  # NFE 1 is the same for every gamma: show it on every line
        lowest = min((r["nfe"] for r in rows), default=None)
        first = next((r for r in rows if r["nfe"] == lowest), None)
        for key in series:
            if first and all(x != first["nfe"] for x, _ in series[key]):
                series[key].insert(0, (first["nfe"], first["score"]))
    return series


def scorer(model, metric: str | None, features: str | None, ref: str | None, device):
    """(name, score(x) -> float, what the score is measured against) of a sweep's metric: logp for
    Gaussian-mixture toy data, else fd-pixels against `ref` or the preset's data, unless `metric` says."""
    p = model.preset
    gmm = p.data.source == "toy" and p.data.toy == "gmm"
    metric = metric or ("logp" if gmm else "fd-pixels")
    reference = None
    if metric == "fd-pixels":
        reference = load_images(ref) if ref else load_dataset(p.data)
    return make_scorer(metric, p, reference, features, ref, device)


def nfe2_job(model, gamma: float, steps: int, *, metric: str | None, features: str | None, ref: str | None,
             n: int, seed: int, batch: int | None, device, out: Path, plot: Path,
             progress: Callable[[str], None] | None = None) -> dict:
    """`ctmtool sample sweep --search-nfe2`: the best intermediate level of two-step sampling
    (`ctmtool.jobs.nfe2_search.search_nfe2`), each candidate scored on `n` samples; the table written to `out`
    (JSON), the plot to `plot`; returns the table."""
    name, score, base = scorer(model, metric, features, ref, device)

    def sample_score(schedule) -> float:
        plan = plan_sampling(model, solver="gamma", gamma=gamma, sigmas=[float(v) for v in schedule],
                             noise="edm", batch=batch)
        x = torch.cat([b.cpu() for b, _ in generate(model, n, plan, seed=seed, device=device)])
        return score(x)

    found = search_nfe2(model, sample_score, steps, gamma, "higher" not in name, progress)
    result = {"checkpoint": str(model.path), "metric": name, "n": n, "seed": seed, **base, **found,
              "plot": str(plot)}
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    pts = [(e["level"], e["score"]) for e in found["evaluated"]]
    save_png(line_chart({f"NFE 2, gamma {gamma:g}": sorted(pts)}, f"{Path(str(model.path)).name}: {name}",
                        "intermediate level", "score"), plot)
    return result


def sweep_job(model, nfes: list[int], gammas: list[float], *, metric: str | None, features: str | None,
              ref: str | None, n: int, seed: int, batch: int | None, device, out: Path, plot: Path,
              progress: Callable[[str], None] | None = None, fast: bool = True) -> dict:
    """`ctmtool sample sweep`: the metric chosen (logp for Gaussian-mixture toy data, else fd-pixels) and its
    references loaded, `nfe_sweep` run, the table written to `out` (JSON) and the plot to `plot`; returns the
    table."""
    name, score, base = scorer(model, metric, features, ref, device)
    rows = nfe_sweep(model, nfes, gammas, score, n, seed, batch, device, progress=progress, fast=fast)
    result = {"checkpoint": str(model.path), "metric": name, "n": n, "seed": seed, **base, "rows": rows,
              "plot": str(plot)}
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    ref_line = (("true samples", base["true_samples_logp"]) if "true_samples_logp" in base else None)
    title = f"{Path(str(model.path)).name}: {name}, {n} samples per point"
    save_png(line_chart(sweep_series(model, rows), title, "NFE", "score", reference=ref_line), plot)
    return result
