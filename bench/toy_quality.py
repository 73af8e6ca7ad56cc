"""Toy (Gaussian-mixture) acceptance figures: mean log-density gaps to true samples, with standard errors.

    python bench/toy_quality.py --analytic                      # exact denoiser + Heun at 18, 40, 100 steps
    python bench/toy_quality.py --gaussian                      # the same for single Gaussians, in closed
                                                                # form
    python bench/toy_quality.py --teacher runs/toy/teacher      # a trained teacher, Heun 18 steps (35 NFE)
    python bench/toy_quality.py --ctm runs/toy/ctm --nfe 1,2,4  # a CTM: gamma-sampling, trajectory error

The true samples' mean log-density is the mixture's negative entropy, estimated from 10^6 draws (standard
error about 0.001 nats). Each model gap uses --repeats batches of --n samples (image seeds 0, 1, 2, ...) and
is printed with the standard error of the mean. The CTM's trajectory error is measured against exact ODE jumps
(a fine Heun solve with the exact denoiser) for all grid pairs t > s on held-out points. Prints JSON.
Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from ctmtool.config import load_preset
from ctmtool.core import solvers
from ctmtool.core.analytic import ExactTrajectory, GaussianMixture
from ctmtool.core.models import analytic_model, load_model
from ctmtool.core.sampling import generate
from ctmtool.core.schedules import ctm_grid, karras_sigmas
from ctmtool.jobs.plan import plan_explicit
from ctmtool.metrics.quality import make_scorer
from ctmtool.metrics.trajectory import trajectory_error


def gap(model, gmm, base: float, n: int, repeats: int, **kw) -> dict:
    """Mean log p of n * repeats model samples minus the true samples', with the standard error of the mean
    (per-sample std / sqrt(count): log p is heavy-tailed, points between modes score -20 nats and below), and
    the samples' `mode_shape` (a positive gap can also mean samples too tight on the modes)."""
    xs = torch.cat([torch.cat([x for x, _ in generate(model, n, plan_explicit(model, batch=n, **kw),
                                                      seed=n * r)]) for r in range(repeats)])
    lp = gmm.log_prob(xs)
    return {"gap": round(float(lp.mean()) - base, 4), "se": round(float(lp.std()) / math.sqrt(len(lp)), 4),
            "samples": len(lp), **mode_shape(gmm, xs)}


def mode_shape(gmm, x: torch.Tensor, far: float = 0.15) -> dict:
    """Share of samples farther than `far` from every component mean (stragglers), and the RMS distance to the
    nearest mean of the others (the within-mode spread), each beside the same figures for as many true
    samples."""
    def shape(y):
        d = torch.cdist(y.reshape(len(y), -1).double(), gmm.means).min(1).values
        return round(float((d > far).double().mean()), 4), round(float(d[d <= far].pow(2).mean().sqrt()), 4)

    (f, r), (f0, r0) = shape(x), shape(gmm.sample(len(x), torch.Generator().manual_seed(12345)))
    return {"stragglers": f, "true_stragglers": f0, "mode_rms": r, "true_mode_rms": r0}


def single_gaussian_gap(std: float, steps: int) -> float:
    """Mean log p gap of EDM Heun samples (exact denoiser, `steps` Karras levels 80 -> 0.002, then 0) for 2-D
    N(0, std^2 I) data. That flow is linear, x_0 = x_T * std / sqrt(std^2 + 80^2), and so is every Heun step,
    so the solver returns r times the exact x_0: samples with r^2 times the data's variance, whose mean
    log-density is lower by exactly r^2 - 1 nats."""
    gm = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1), std)
    x = torch.full((1, 2), math.sqrt(std**2 + 80.0**2), dtype=torch.float64)
    sigmas = torch.cat([karras_sigmas(steps), torch.zeros(1, dtype=torch.float64)])
    r = float(solvers.heun(gm, x, sigmas)[0, 0]) / std
    return -(r * r - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--analytic", action="store_true",
                    help="the exact denoiser with Heun at 18, 40 and 100 steps")
    ap.add_argument("--gaussian", action="store_true",
                    help="Heun's gap on single 2-D Gaussians of std 0.02..1 (closed form, no sampling)")
    ap.add_argument("--teacher", help="teacher checkpoint or run directory (Heun 18 steps)")
    ap.add_argument("--ctm", help="CTM checkpoint or run directory")
    ap.add_argument("--nfe", default="1,2,4", help="CTM NFEs (gamma 0)")
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    preset = load_preset(a.preset)
    am = analytic_model(preset)
    gmm = am.net
    base = make_scorer("logp", preset)[2]["true_samples_logp"]
    out: dict = {"true_samples_logp": round(base, 4)}
    if a.analytic:
        out["analytic_heun"] = {st: gap(am, gmm, base, a.n, a.repeats, solver="heun", steps=st)
                                for st in (18, 40, 100)}
    if a.gaussian:
        out["single_gaussian_heun"] = {f"std {c}": {st: round(single_gaussian_gap(c, st), 4)
                                                    for st in (18, 40, 100)}
                                       for c in (0.02, 0.05, 0.1, 0.3, 1.0)}
    if a.teacher:
        out["teacher_heun18"] = gap(load_model(a.teacher), gmm, base, a.n, a.repeats, solver="heun", steps=18)
    if a.ctm:
        m = load_model(a.ctm)
        out["ctm"] = {f"nfe{k}": gap(m, gmm, base, a.n, a.repeats, solver="gamma", nfe=k, gamma=0.0)
                      for k in (int(v) for v in a.nfe.split(","))}
        out["analytic_heun_1_2_steps"] = {st: gap(am, gmm, base, a.n, 1, solver="heun", steps=st)["gap"]
                                          for st in (1, 2)}
        x0 = gmm.sample(512, torch.Generator().manual_seed(9))
        tr = trajectory_error(m.net, ExactTrajectory(gmm, steps=128), x0, ctm_grid(m.preset),
                              torch.Generator().manual_seed(1))
        out["trajectory"] = {k: v for k, v in tr.items() if k != "per_t"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
