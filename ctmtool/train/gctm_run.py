"""A GCTM training run: data, coupling, moments and `gctm_objective`, handed to the shared run and loop.

`gctm_parts` is what `ctmtool.train.run.train(preset, "distill", ...)` builds for a preset with [gctm]. The
coupling's second moments are estimated once, before the first step, from `MOMENT_ITEMS` data items paired
as in training (or taken from preset.gctm.var0/var1/cov01 where set) and stored in every checkpoint's
meta['moments'], so `build_precond('gctm', ...)` rebuilds exactly the same preconditioning.

For 2-D translation presets `translation_report` scores a model: mean target log-density (Gaussian-mixture
targets), energy distance and sliced Wasserstein-2 of one-step outputs against target samples, each next
to the target-vs-target baseline, and the mean transport distance ||output - input|| next to that of random
pairs and of the exact optimal matching.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctmtool.checkpoint import Checkpoint
from ctmtool.config import Preset
from ctmtool.core.models import Model, analytic_model
from ctmtool.core.precond import GCTMPrecond
from ctmtool.core.translate import translate
from ctmtool.data import load_dataset, toy_points
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.gctm.couplings import (
    DATASET_SOURCES,
    Coupling,
    coupling_from_config,
    coupling_kind,
    item_shape,
    load_paired,
)
from ctmtool.gctm.source_data import load_source
from ctmtool.jobs.plan import plan_translation
from ctmtool.jobs.plots import preset_view, save_png, side_by_side
from ctmtool.train.gctm_objective import gctm_objective
from ctmtool.train.setup import RunParts, check_labels

MOMENT_ITEMS = 2048  # data items paired to estimate Var x0, Var x1, Cov(x0, x1)


def load_gctm_data(preset: Preset, data_path: str | None = None) -> Dataset:
    """The training items: side-by-side pairs for a paired coupling, else the target data of [data]."""
    g = preset.gctm
    if coupling_kind(preset.gctm.coupling) == "paired":
        path = data_path or g.paired_path or preset.data.path
        if path is None:
            raise UserError(f"preset {preset.name!r} trains on paired images: give the folder as `data` (a "
                            "path) (A/ and B/ sub-folders, or side-by-side pix2pix files) or set "
                            "gctm.paired_path")
        return load_paired(path, size=g.paired_size)
    return load_dataset(preset.data, path=data_path)


def make_coupling_for(preset: Preset, data: Dataset | None = None) -> Coupling:
    """The preset's coupling (toy sources drawn from preset.data.gmm where they name 'gmm'; a dataset source
    loaded from [gctm.source] and checked against the target items of `data`; class Gaussians from `data`'s
    labelled items for `latent`)."""
    source = load_source(preset, data) if coupling_kind(preset.gctm.coupling) in DATASET_SOURCES else None
    return coupling_from_config(preset.gctm, gmm=preset.data.gmm, source=source, data=data)


def estimate_moments(preset: Preset, coupling: Coupling, data: Dataset, device: torch.device,
                     n: int = MOMENT_ITEMS) -> dict[str, float]:
    """{var0, var1, cov01} from n items paired `micro_batch` at a time; preset.gctm.var0/var1/cov01
    override."""
    gen = torch.Generator(device).manual_seed(preset.distill.seed + 3)
    micro = preset.distill.micro_batch or preset.distill.batch
    m = coupling.moments(data, generator=gen, n=min(n, len(data)), batch=micro, device=device)
    for key in ("var0", "var1", "cov01"):
        fixed = getattr(preset.gctm, key)
        if fixed is not None:
            m[key] = float(fixed)
    return m


def eval_pairs(preset: Preset, coupling: Coupling, data: Dataset, n: int,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of (x0, x1) pairs for snapshots (the same every call), paired a training batch at a
    time."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    x, y = data.get(idx, device)
    gen, micro = torch.Generator(device).manual_seed(0), preset.distill.micro_batch or preset.distill.batch
    pairs = [coupling.pair(x[i:i + micro], None if y is None else y[i:i + micro], gen)
             for i in range(0, len(x), micro)]
    return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


def _snapshotter(obj, preset: Preset, shape, pairs, run_dir: Path):
    x0, x1 = pairs

    def snapshot(step: int) -> Path:
        model = Model("gctm", obj.sampling_model(), preset, tuple(shape))
        out = translate(model, x1, plan_translation(model))
        cols = [x1, out, x0] if model.is_image else [x1, out]
        pic = side_by_side(cols, model.is_image, reference=None if model.is_image else x0,
                           titles=[f"step {step}: source x1", "translated G(x1, 1, 0)"],
                           extent=preset_view(preset)[1])
        return save_png(pic, run_dir / f"samples-{step:08d}.png")

    return snapshot


def _gmm_evaluator(obj, preset: Preset, shape, pairs):
    gmm = analytic_model(preset).net
    x1 = pairs[1]

    def evaluate() -> dict:
        model = Model("gctm", obj.sampling_model(), preset, tuple(shape))
        return {"logp_translations":
                float(gmm.log_prob(translate(model, x1, plan_translation(model)).cpu()).mean())}

    return evaluate


def gctm_parts(preset: Preset, device: torch.device, rep, run_dir: Path, *, data: Dataset | None = None,
               data_path: str | None = None, teacher: str | None = None,
               resume: Checkpoint | None = None) -> RunParts:
    """A GCTM run (Kim et al. 2024b, Alg. 1) on preset.gctm's coupling with preset.distill's optimiser and
    duration, for `ctmtool.train.run.train`: moments from the resumed checkpoint or estimated from the
    data."""
    if preset.gctm is None:
        raise UserError(f"preset {preset.name!r} has no [gctm] section; GCTM training needs one (see "
                        "ctmtool/presets/toy-translate.toml)")
    if teacher is not None:
        raise UserError("GCTM training has no teacher (the model's own EMA velocity is integrated); drop "
                        "`teacher`")
    data = data if data is not None else load_gctm_data(preset, data_path)
    check_labels(preset, data)
    coupling = make_coupling_for(preset, data)
    shape = item_shape(preset.gctm.coupling, data.shape)
    if resume is not None:
        if resume.kind != GCTMPrecond.checkpoint_kind or "moments" not in resume.meta:
            raise UserError(f"{resume.path} is not a GCTM checkpoint with stored moments; it cannot be "
                            "resumed here")
        moments = resume.meta["moments"]
    else:
        moments = estimate_moments(preset, coupling, data, device)
    rep.log(f"data: {data.name}, {len(data)} items; coupling {preset.gctm.coupling}; x0/x1 shape {shape}; "
            "moments "
            + ", ".join(f"{k} {moments[k]:.4g}" for k in ("var0", "var1", "cov01")))
    paired = coupling_kind(preset.gctm.coupling) == "paired"
    obj = gctm_objective(preset, shape, device, coupling, moments, flip_pairs=paired and preset.data.xflip)
    micro = preset.distill.micro_batch or preset.distill.batch
    pairs = eval_pairs(preset, coupling, data, 64 if len(shape) == 3 else min(4096, 8 * micro), device)
    gmm = preset.data.source == "toy" and preset.data.toy == "gmm" and not paired
    return RunParts(obj, data, preset.distill, _snapshotter(obj, preset, shape, pairs, run_dir),
                    _gmm_evaluator(obj, preset, shape, pairs) if gmm else None,
                    preset.data.xflip and not paired,
                    f"gctm: {sum(p.numel() for p in obj.net.parameters()) / 1e6:.2f}M parameters, grid of "
                    f"{preset.gctm.grid} times, device {device}")


# --------------------------------------------------------------------------------------------------
# Scoring 2-D translations


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|a - b| - E|a - a'| - E|b - b'| (Szekely & Rizzo), V-statistics, 0 iff equal
    laws."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between equal-size samples: sqrt of the mean over random directions of
    the squared 1-D W2 (sorted projections)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equal-size samples, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    return float((pa - pb).square().mean().sqrt())


def held_out_sources(preset: Preset, n: int, seed: int = 12345) -> torch.Tensor:
    """n fresh source points of a toy coupling (toy:<name> / toy-ot:<name>), not from the training pool."""
    kind, _, name = preset.gctm.coupling.strip().partition(":")
    if kind not in ("toy", "toy-ot"):
        raise UserError(f"held-out sources need a toy coupling, got {preset.gctm.coupling!r}")
    if name == "gaussian":
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return toy_points(name, n, seed, preset.data.gmm).values


def matched_displacement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean ||a_i - b_pi(i)|| under the exact optimal matching for the squared distance (the W2 plan between
    equal-size samples, by the Hungarian algorithm): the shortest transport a translation could achieve."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(a.double().flatten(1), b.double().flatten(1))
    rows, cols = linear_sum_assignment(cost.square().numpy())
    return float(cost[torch.as_tensor(rows), torch.as_tensor(cols)].mean())


@torch.no_grad()
def translation_report(model: Model, n: int = 4096, seed: int = 12345, nfe: int = 1) -> dict[str, float]:
    """One-step outputs of held-out sources vs fresh target samples (2-D toy presets); baselines alongside."""
    preset = model.preset
    x1 = held_out_sources(preset, n, seed)
    out = translate(model, x1.to(next(model.net.parameters()).device), plan_translation(model, nfe=nfe)).cpu()
    target = toy_points(preset.data.toy, n, seed + 1, preset.data.gmm).values
    target2 = toy_points(preset.data.toy, n, seed + 2, preset.data.gmm).values
    rep = {"n": n, "nfe": nfe,
           "energy_out": energy_distance(out, target), "energy_baseline": energy_distance(target2, target),
           "energy_source": energy_distance(x1, target),
           "sw2_out": sliced_wasserstein(out, target), "sw2_baseline": sliced_wasserstein(target2, target),
           "sw2_source": sliced_wasserstein(x1, target),
           "displacement": float((out - x1).norm(dim=1).mean()),
           "displacement_random_pairs": float((target - x1).norm(dim=1).mean()),
           "displacement_exact_ot": matched_displacement(x1[:2048], target[:2048])}
    if preset.data.toy == "gmm":
        gmm = analytic_model(preset).net
        rep.update(logp_out=float(gmm.log_prob(out).mean()), logp_target=float(gmm.log_prob(target).mean()),
                   logp_source=float(gmm.log_prob(x1).mean()))
    return rep
