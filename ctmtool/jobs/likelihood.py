"""The likelihood of a data set under a model, as one call: options checked, the divergence estimator chosen,
the data fitted to the model and checked to be finite, the result summarised (Song et al. 2021, App. D.2;
the maths is in `ctmtool.core.likelihood`, the derivations in docs/likelihood.md)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ctmtool.errors import UserError

EXACT_MAX_DIM = 16  # divergence "auto": exact up to this many dimensions, Hutchinson beyond
METHODS = ("ode", "elbo")
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBE_DISTS = ("rademacher", "gaussian")
SOLVERS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "rk4", "midpoint", "heun3", "euler")
FIXED_SOLVERS = ("rk4", "midpoint", "heun3", "euler")
DRAW_AVERAGES = ("logmeanexp", "mean")
PER_ITEM_EXTS = (".csv", ".jsonl")


@dataclass
class NLLOptions:
    method: str = "ode"  # ode: probability-flow ODE; elbo: the variational bound
    divergence: str = "auto"  # auto | exact | hutchinson
    probes: int = 4  # Hutchinson probes per item
    probe_dist: str = "rademacher"  # rademacher | gaussian
    solver: str = "dopri5"  # one of SOLVERS
    steps: int = 100  # steps in ln(sigma) of fixed-step solvers
    rtol: float = 1e-3  # adaptive-solver tolerances
    atol: float = 1e-3
    elbo_samples: int = 128  # (sigma, noise) pairs per item for the ELBO
    dequant_draws: int = 1  # uniform dequantisation draws per image
    draw_average: str = "logmeanexp"  # how draws are combined: logmeanexp | mean

    def check(self) -> NLLOptions:
        """Refuse unknown choices and out-of-range numbers, naming the parameter."""
        for name, allowed in (("method", METHODS), ("divergence", DIVERGENCES), ("probe_dist", PROBE_DISTS),
                              ("solver", SOLVERS), ("draw_average", DRAW_AVERAGES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown `{name}` {getattr(self, name)!r}; choose one of "
                                f"{', '.join(allowed)}")
        for name, least in (("probes", 1), ("steps", 1), ("elbo_samples", 2), ("dequant_draws", 1)):
            if getattr(self, name) < least:
                raise UserError(f"`{name}` must be at least {least} (got {getattr(self, name)})")
        if not (self.rtol > 0 and self.atol > 0):
            raise UserError(f"`rtol` and `atol` must be positive (got {self.rtol}, {self.atol})")
        return self


def load_data(path: str | Path, model):
    """The data set at `path`, checked against the model's shape and labels, finite; labels dropped for an
    unconditional model."""
    from ctmtool.data.base import Dataset
    from ctmtool.data.images import load_images

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a folder, .zip or .npz of images, an image file, "
                        "or an .npz of float points")
    ds = _npz_folder(path) or load_images(path)
    if len(ds) == 0:
        raise UserError(f"{ds.name} holds no items; give at least one")
    if tuple(ds.shape) != tuple(model.data_shape):
        what = "images" if ds.is_image else "points"
        raise UserError(f"{ds.name} holds {what} of shape {tuple(ds.shape)} but the model expects "
                        f"{tuple(model.data_shape)}; give data of the model's shape")
    if ds.values.is_floating_point() and not torch.isfinite(ds.values).all():
        bad = int((~torch.isfinite(ds.values.flatten(1))).any(1).sum())
        raise UserError(f"{ds.name} holds NaN or infinite values (items with them: {bad}); remove or fix "
                        "them")
    if model.label_dim and ds.labels is None:
        raise UserError(f"the model is class-conditional ({model.label_dim} classes) but {ds.name} has no "
                        "labels; put images in class sub-folders or save 'labels' in the .npz")
    if not model.label_dim and ds.labels is not None:
        ds = Dataset(ds.values, None, 0, ds.name, ds.items)  # an unconditional model takes no labels
    return ds


def _npz_folder(path: Path):
    """A folder holding .npz files and no images (e.g. 2-D points): their items, concatenated in name
    order."""
    from ctmtool.data.base import Dataset
    from ctmtool.data.images import IMAGE_EXTS, load_npz

    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file())
    npz = [p for p in files if p.suffix.lower() == ".npz"]
    if not npz or any(p.suffix.lower() in IMAGE_EXTS for p in files):
        return None
    parts = [load_npz(p) for p in npz]
    if len({(d.shape, d.values.dtype) for d in parts}) > 1:
        raise UserError(f"the .npz files in {path} hold items of different shapes or types; keep one kind "
                        "per folder")
    labels = None if any(d.labels is None for d in parts) else torch.cat([d.labels for d in parts])
    items = [f"{p.name}:{i}" for p, d in zip(npz, parts, strict=True) for i in range(len(d))]
    return Dataset(torch.cat([d.values for d in parts]), labels, max(d.num_classes for d in parts), str(path),
                   items)


def check_density(model) -> None:
    """Refuse a model without a data density (a GCTM transports one distribution to another) before
    `ctmtool.core.likelihood.model_denoiser` is asked for its denoiser."""
    if not getattr(model.net, "has_density", True):
        raise UserError(f"a {model.kind.upper()} transports one distribution to another and defines no data "
                        "density; give a teacher or CTM checkpoint (or the analytic model) for likelihoods")


def likelihood_of(model, ds, opts: NLLOptions, *, n: int | None = None, batch: int = 64, seed: int = 0,
                  device="cpu", progress=None):
    """(summary dict, per-item `Evaluation`) of the first `n` items of `ds` (all when None) under `model`."""
    from ctmtool.core.likelihood import ODEOptions, evaluate, make_estimator, model_denoiser

    opts.check()
    for name, value in (("n", n), ("batch", batch)):
        if value is not None and value < 1:
            raise UserError(f"`{name}` must be at least 1 (got {value})")
    check_density(model)
    denoise = model_denoiser(model)
    dim = math.prod(ds.shape)
    div = (opts.divergence if opts.divergence != "auto"
           else ("exact" if dim <= EXACT_MAX_DIM else "hutchinson"))
    ode = ODEOptions(divergence=div, probes=opts.probes, probe_dist=opts.probe_dist, rtol=opts.rtol,
                     atol=opts.atol, method=opts.solver, steps=opts.steps)
    estimator = make_estimator(denoise, model.sigma_min, model.sigma_max, opts.method, ode, opts.elbo_samples)
    dtype = torch.float64 if model.kind == "analytic" else torch.float32  # networks run in float32
    total = len(ds) if n is None else min(n, len(ds))
    try:
        ev = evaluate(estimator, ds, n=total, batch=batch, dequant_draws=opts.dequant_draws,
                      draw_average=opts.draw_average, seed=seed, device=device, dtype=dtype,
                      progress=progress)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise UserError(f"out of memory ({type(err).__name__}); lower `batch`") from None
    if not torch.isfinite(ev.nll).all():
        raise UserError(f"the likelihood of {int((~torch.isfinite(ev.nll)).sum())} items is not finite; the "
                        "model (NaN/inf weights?) or the solver failed: try `solver` rk4 or another "
                        "checkpoint")
    return _summary(ev, model, ds, opts, div, seed), ev


def paper_likelihood_of(model, ds, *, n: int | None = None, batch: int = 64, seed: int = 0,
                        rtol: float = 1e-3, atol: float = 1e-3, device="cpu", progress=None) -> dict:
    """The CTM paper's bits/dim estimate (sony/ctm eval_bpd.py; `ctmtool.core.likelihood_paper`) of the first
    `n` images."""
    from ctmtool.core.likelihood import model_denoiser
    from ctmtool.core.likelihood_paper import ctm_paper_bpd

    if not ds.is_image:
        raise UserError(f"{ds.name} holds points; the ctm-paper protocol is defined for images (use the "
                        "exact one)")
    for name, value in (("n", n), ("batch", batch)):
        if value is not None and value < 1:
            raise UserError(f"`{name}` must be at least 1 (got {value})")
    check_density(model)
    denoise = model_denoiser(model)
    total = len(ds) if n is None else min(n, len(ds))
    gen = torch.Generator().manual_seed(seed)
    bpds, nfe = [], 0
    for lo in range(0, total, batch):
        x = ds.values[lo:min(total, lo + batch)].to(device)
        x = x.float() / 127.5 - 1 if not x.is_floating_point() else x.float()
        bpd, evals = ctm_paper_bpd(lambda v, s: denoise(v, s), x, gen, sigma_min=model.sigma_min,
                                   sigma_max=model.sigma_max, rtol=rtol, atol=atol)
        bpds.append(bpd.cpu())
        nfe += evals
        if progress is not None:
            progress(x.shape[0])
    b = torch.cat(bpds)
    if not torch.isfinite(b).all():
        raise UserError("the estimate is not finite for some images; the model (NaN/inf weights?) or the "
                        "solver failed")
    se = float(b.std() / math.sqrt(len(b))) if len(b) > 1 else None
    return {"protocol": "ctm-paper", "bits_per_dim": float(b.mean()), "bits_per_dim_se": se, "n": len(b),
            "dim": math.prod(ds.shape), "nfe": nfe, "kind": model.kind, "data": ds.name, "seed": seed,
            "rtol": rtol, "atol": atol,
            "note": "sony/ctm eval_bpd.py: Gaussian-perturbed data at sigma(1e-3), one Rademacher probe, "
                    "RK45, residual at sigma 0.413, +7 offset; not comparable with the exact protocol "
                    "(docs/likelihood.md)"}


def _summary(ev, model, ds, opts: NLLOptions, div: str, seed: int) -> dict:
    out = ev.summary()
    out.update({"method": opts.method, "kind": model.kind, "data": ds.name, "sigma_min": model.sigma_min,
                "sigma_max": model.sigma_max, "seed": seed})
    if opts.method == "ode":
        out.update({"divergence": div, "solver": opts.solver})
        if div == "hutchinson":
            out.update({"probes": opts.probes, "probe_dist": opts.probe_dist})
        out.update({"rtol": opts.rtol, "atol": opts.atol} if opts.solver not in FIXED_SOLVERS
                   else {"steps": opts.steps})
    else:
        out["elbo_samples"] = opts.elbo_samples
    if ds.is_image:
        out.update({"dequant_draws": opts.dequant_draws, "draw_average": opts.draw_average,
                    "units": "nats per 8-bit image in [0, 256) units; bits/dim of the discrete data"})
    if opts.method == "elbo":
        out["bound"] = "upper bound on NLL"
    elif ds.is_image:
        out["bound"] = "upper bound on discrete NLL (uniform dequantisation)"
    else:
        out["bound"] = None
    return out


def check_per_item_path(path: Path) -> None:
    if path.suffix.lower() not in PER_ITEM_EXTS:
        raise UserError(f"`per_item` {path}: use a .csv or .jsonl file name")


def write_per_item(path: str | Path, ev) -> Path:
    """One row per item (name, nll, bpd, stderr) as .csv or .jsonl, written atomically."""
    from ctmtool.checkpoint import atomic_write

    path = Path(path)
    check_per_item_path(path)
    rows = [{"name": name, "nll": float(nll), "bpd": float(bpd),
             "stderr": None if math.isnan(se) else float(se)}
            for name, nll, bpd, se
            in zip(ev.names, ev.nll.tolist(), ev.bpd.tolist(), ev.stderr.tolist(), strict=True)]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["name", "nll", "bpd", "stderr"])
        w.writeheader()
        w.writerows({**r, "stderr": "" if r["stderr"] is None else r["stderr"]} for r in rows)
        text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, newline=""))
    return path
