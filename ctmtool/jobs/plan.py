"""The sampling plan: every user setting of how a model is sampled (solver, schedule, NFE, gamma, noise
stream, class, batch) checked once and resolved into a `SamplingPlan` (`ctmtool.core.sampling`), which
`sample`, `fid`, `sample sweep`, `translate`, `export` and the serve engine hand to the one sampler. What the
caller leaves out comes from the checkpoint's `[sample]` preset section; options that do not apply to the
model are refused (Kim et al. 2024, Sec. 5: `nfe` and `gamma` belong to gamma-sampling of a trajectory model;
a teacher is solved with Heun/Euler on `steps` grid points). The refusals that a model cannot generate or
cannot translate live here.
"""

from __future__ import annotations

import torch

from ctmtool.core.noise import NOISE_KINDS
from ctmtool.core.sampling import SamplingPlan, default_schedule, teacher_schedule
from ctmtool.core.schedules import check_schedule
from ctmtool.core.zero_shot import TASKS, check_task
from ctmtool.errors import UserError

SOLVERS = ("gamma", "heun", "euler")


def at_least(least: int = 1, **values: int) -> None:
    """Refuse counts below `least` (`nfe`, `batch`) in the words of the command line's `at_least`."""
    for name, value in values.items():
        if value < least:
            raise UserError(f"`{name}` must be at least {least} (got {value})")


def what(model) -> str:
    return f"{model.path}" if model.path else f"this {model.kind} model"


def check_solver(model, solver: str) -> None:
    """Refuse a solver the model cannot run, and a trajectory model whose source is not Gaussian noise."""
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}; use gamma, heun or euler")
    if solver == "gamma" and not model.is_trajectory:
        raise UserError(f"{model.path or 'this model'} is a {model.kind} (a denoiser), not a CTM: "
                        "gamma-sampling needs a distilled model; use `solver` heun or euler, or distill one "
                        "with `ctmtool distill`")
    if solver != "gamma" and not model.net.has_density:
        raise UserError(f"{model.path or 'this model'} is a {model.kind} between two distributions: it has "
                        "no noise-to-data denoiser for an ODE solver; use `solver` gamma")
    refuse_generation(model)


def refuse_generation(model) -> None:
    """The one refusal of generating from noise with a trajectory model whose source is not Gaussian."""
    if model.is_trajectory and not model.net.gaussian_source:
        raise UserError(f"{model.path or 'this model'} maps a non-Gaussian source to data (coupling "
                        f"{model.preset.gctm.coupling!r}); it cannot generate from noise: translate inputs "
                        "instead")


def refuse_translation(model, nfe: int = 1, gamma: float = 0.0) -> None:
    """The one refusal of translating with a model that is not a GCTM, or of Gaussian re-noising of a GCTM
    whose source is not Gaussian; `nfe` >= 1 and `gamma` in [0, 1]."""
    at_least(nfe=nfe)
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    if not (model.is_trajectory and not model.net.has_density):  # a GCTM: transport between two distributions
        raise UserError(f"{what(model)} is a {model.kind} checkpoint; translation needs a GCTM (train one "
                        "with `ctmtool distill --preset toy-translate` or another GCTM preset); a CTM can "
                        "edit images (`ctmtool translate edit`, `editing.sdedit`)")
    if gamma > 0 and nfe > 1 and not model.net.gaussian_source:
        raise UserError("`gamma` > 0 re-noises with Gaussian noise, which only fits a Gaussian source; this "
                        f"GCTM's coupling is {model.preset.gctm.coupling!r}: use `gamma` 0")


def plan_translation(model, *, nfe: int = 1, gamma: float = 0.0, batch: int = 256) -> SamplingPlan:
    """The plan of GCTM translation (`ctmtool.core.translate.translate`): `nfe` jumps along the model's time
    grid, 1 -> 0, with gamma-sampling; refused for a model that does not translate (`refuse_translation`)."""
    refuse_translation(model, nfe, gamma)
    at_least(batch=batch)
    return SamplingPlan("gamma", model.net.default_schedule(nfe), gamma, batch=batch)


def check_manipulation(model, to_class: int, encode_steps: int = 18) -> int:
    """Refuse latent manipulation for a model whose source has no classes (only a GCTM trained with the
    `latent` coupling has them) and a target class out of range; returns the number of classes."""
    k = getattr(model.net, "source_classes", 0) if model.is_trajectory else 0
    if not k:
        coupling = model.preset.gctm.coupling if model.preset.gctm is not None else None
        how = f"coupling {coupling!r}" if coupling else f"a {model.kind} checkpoint"
        raise UserError(f"{what(model)} is {how}: `to_class` moves a latent between the class Gaussians of a "
                        "GCTM trained with coupling 'latent' (e.g. `ctmtool distill --preset digits-latent`)")
    if not 0 <= to_class < k:
        raise UserError(f"`to_class` {to_class} is outside the model's {k} classes (0..{k - 1})")
    if encode_steps < 1:
        raise UserError(f"`encode_steps` must be at least 1 (got {encode_steps})")
    return k


def check_editable(model, level: float | None = None) -> None:
    """Refuse a model that cannot edit (a teacher; a GCTM from a non-Gaussian source) or a level out of
    range."""
    if not model.is_trajectory:
        raise UserError(f"{model.path or 'this model'} is a {model.kind} checkpoint; editing needs a CTM or "
                        "a GCTM (a teacher can be distilled into a CTM with `ctmtool distill`)")
    try:
        model.net.check_level(model.net.strength_level(1.0) if level is None else level)
    except ValueError as err:
        raise UserError(str(err)) from None


def editing_level(model, strength: float) -> float:
    """An editing strength in (0, 1] as the model's own level (`TrajectoryModel.strength_level`), checked."""
    check_editable(model)
    if not 0.0 < strength <= 1.0:
        raise UserError(f"`strength` must be in (0, 1], got {strength}")
    level = model.net.strength_level(strength)
    check_editable(model, level)
    return level


def plan_editing(model, level: float, *, nfe: int = 1, gamma: float = 0.0, batch: int = 256) -> SamplingPlan:
    """The plan of SDEdit / stroke editing from `level` (`editing_level`): `nfe` jumps down to the end of the
    trajectory (`ctmtool.core.editing.sdedit`)."""
    check_editable(model, level)
    at_least(nfe=nfe)
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    at_least(batch=batch)
    return SamplingPlan("gamma", model.net.edit_schedule(level, nfe), gamma, batch=batch)


def plan_restoration(model, level: float, task: str, *, factor: int = 8, nfe: int = 1, gamma: float = 1.0,
                     batch: int = 256) -> SamplingPlan:
    """The plan of zero-shot restoration (`ctmtool.core.zero_shot.restore`) from `level` (`editing_level`):
    the task checked against the model (`zero_shot.check_task`: an image model, RGB to colourise, a `factor`
    that divides the image), then `nfe` jumps down to the end of the trajectory, as `plan_editing` plans
    them."""
    if task not in TASKS:
        raise UserError(f"`restore` {task}: choose among {', '.join(TASKS)}")
    try:
        check_task(task, tuple(model.data_shape), factor)
    except ValueError as err:
        raise UserError(str(err)) from None
    return plan_editing(model, level, nfe=nfe, gamma=gamma, batch=batch)


def check_sigmas(model, sigmas: list[float], final_zero: bool) -> None:
    """Refuse noise levels outside the model's [sigma_min, sigma_max] (a final 0 is allowed for ODE
    solvers)."""
    try:
        check_schedule(sigmas[:-1] if final_zero and len(sigmas) > 2 and sigmas[-1] == 0 else sigmas)
    except ValueError as err:
        raise UserError(f"`sigmas`: {err}") from None
    lo, hi = model.sigma_min, model.sigma_max
    inner = sigmas[:-1] if final_zero and sigmas and sigmas[-1] == 0 else sigmas
    bad = [v for v in inner if not lo * (1 - 1e-6) <= v <= hi * (1 + 1e-6)]
    if bad:
        raise UserError(f"`sigmas` {bad} outside the model's range [{lo:g}, {hi:g}]; give levels inside it")


def plan_sampling(model, *, solver: str | None = None, nfe: int | None = None, gamma: float | None = None,
                  steps: int | None = None, sigmas: list[float] | None = None, class_label: int | None = None,
                  noise: str | None = None, batch: int | None = None) -> SamplingPlan:
    """The sampling plan for `model`: given values, else the preset's `[sample]`; inapplicable ones
    refused."""
    def preset(name: str):  # the preset's [sample] value, read only for what was left out
        return getattr(model.preset.sample, name)

    if solver is None:
        solver = preset("solver") if model.is_trajectory or preset("solver") != "gamma" else "heun"
    check_solver(model, solver)
    if solver == "gamma":
        if steps is not None:
            raise UserError("`steps` sets the grid of the heun/euler solvers; gamma-sampling takes `nfe` "
                            "(jumps)")
        if sigmas is not None and nfe is not None:
            raise UserError("give `nfe` or `sigmas`, not both (a schedule of N+1 levels makes N jumps)")
    else:
        if nfe is not None:
            raise UserError(f"`nfe` counts the jumps of gamma-sampling a CTM; {what(model)} is solved with "
                            f"{solver} on `steps` grid points (Heun: 2 x steps - 1 evaluations); drop `nfe` "
                            "or sample a CTM")
        if gamma not in (None, 0.0):
            raise UserError(f"`gamma` applies to gamma-sampling of a CTM; the {solver} solver is "
                            "deterministic (drop `gamma`)")
    gamma = preset("gamma") if gamma is None else gamma
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    sigmas = sigmas if sigmas is not None else (preset("sigmas") if nfe is None and steps is None else None)
    if sigmas is not None:
        check_sigmas(model, sigmas, final_zero=solver != "gamma")
    if class_label is not None:
        if not model.label_dim:
            raise UserError(f"`class_label` {class_label} given, but {what(model)} is unconditional; drop it")
        if not 0 <= class_label < model.label_dim:
            raise UserError(f"`class_label` {class_label} is outside 0..{model.label_dim - 1}")
    noise, batch = preset("noise") if noise is None else noise, preset("batch") if batch is None else batch
    if noise not in NOISE_KINDS:
        raise UserError(f"unknown `noise` {noise!r}; use one of {', '.join(NOISE_KINDS)}")
    if batch < 1:
        raise UserError(f"`batch` must be at least 1, got {batch}")
    if sigmas is not None:
        final_zero = solver != "gamma" and len(sigmas) > 2 and sigmas[-1] == 0  # an ODE solve may end at 0
        try:
            schedule = check_schedule(sigmas[:-1] if final_zero else sigmas)
        except ValueError as err:
            raise UserError(f"`sigmas`: {err}") from None
        if final_zero:
            schedule = torch.cat([schedule, torch.zeros(1, dtype=torch.float64)])
    elif solver == "gamma":
        nfe = preset("nfe") if nfe is None else nfe
        if nfe < 1:
            raise UserError(f"`nfe` must be at least 1, got {nfe}")
        schedule = default_schedule(model, nfe)
    else:
        steps = preset("steps") if steps is None else steps
        if steps < 1:
            raise UserError(f"`steps` must be at least 1, got {steps}")
        schedule = teacher_schedule(model, steps)
    return SamplingPlan(solver, schedule, gamma if solver == "gamma" else 0.0, noise, class_label, batch,
                        None if sigmas is None else tuple(sigmas))


def plan_explicit(model, *, solver: str = "gamma", nfe: int = 1, gamma: float = 0.0, steps: int = 18,
                  sigmas: list[float] | None = None, class_label: int | None = None, noise: str = "edm",
                  batch: int = 256) -> SamplingPlan:
    """A plan from explicit settings with the sampler's own defaults (one jump, gamma 0, 18 Heun steps, the
    EDM stream) instead of the preset's [sample]; what does not apply to `solver` is ignored. Checked as
    `plan_sampling` checks. For library callers, benchmarks and tests."""
    if solver == "gamma":
        return plan_sampling(model, solver=solver, nfe=None if sigmas is not None else nfe, gamma=gamma,
                             sigmas=sigmas, class_label=class_label, noise=noise, batch=batch)
    return plan_sampling(model, solver=solver, steps=None if sigmas is not None else steps, sigmas=sigmas,
                         class_label=class_label, noise=noise, batch=batch)
