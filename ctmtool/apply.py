"""Running a model over many items, batch by batch, with per-item seeds: sampling, translation and editing.

`sample_options` fills what the caller left out from the checkpoint's `[sample]` preset section and refuses
options that do not apply to the model (Kim et al. 2024, Sec. 5: `nfe` and `gamma` belong to
gamma-sampling of a trajectory model; a teacher is solved with Heun/Euler on `steps` grid points).
`draw`, `translate_items` and `edit_items` collect results on the CPU; item i always uses seed + i, so
the batch size never changes a result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctmtool.errors import UserError

Advance = Callable[[int], None] | None


def sample_options(model, *, solver: str | None = None, nfe: int | None = None, gamma: float | None = None,
                   steps: int | None = None, sigmas: list[float] | None = None,
                   class_label: int | None = None, noise: str | None = None) -> dict:
    """The sampler settings for `model`: given values, else the preset's `[sample]`; inapplicable ones refused."""
    s = model.preset.sample
    if solver is None:
        solver = s.solver if model.is_trajectory or s.solver != "gamma" else "heun"
    from ctmtool.sampling import check_solver

    check_solver(model, solver)
    if solver == "gamma":
        if steps is not None:
            raise UserError("`steps` sets the grid of the heun/euler solvers; gamma-sampling takes `nfe` (jumps)")
        if sigmas is not None and nfe is not None:
            raise UserError("give `nfe` or `sigmas`, not both (a schedule of N+1 levels makes N jumps)")
    else:
        if nfe is not None:
            raise UserError(f"`nfe` counts the jumps of gamma-sampling a CTM; {_what(model)} is solved with {solver} "
                            "on `steps` grid points (Heun: 2 x steps - 1 evaluations); drop `nfe` or sample a CTM")
        if gamma not in (None, 0.0):
            raise UserError(f"`gamma` applies to gamma-sampling of a CTM; the {solver} solver is deterministic "
                            "(drop `gamma`)")
    gamma = s.gamma if gamma is None else gamma
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    sigmas = sigmas if sigmas is not None else (s.sigmas if nfe is None and steps is None else None)
    if sigmas is not None:
        check_sigmas(model, sigmas, final_zero=solver != "gamma")
    if class_label is not None:
        if not model.label_dim:
            raise UserError(f"`class_label` {class_label} given, but {_what(model)} is unconditional; drop it")
        if not 0 <= class_label < model.label_dim:
            raise UserError(f"`class_label` {class_label} is outside 0..{model.label_dim - 1}")
    return {"solver": solver, "nfe": s.nfe if nfe is None else nfe, "gamma": gamma if solver == "gamma" else 0.0,
            "steps": s.steps if steps is None else steps, "sigmas": sigmas, "class_label": class_label,
            "noise": s.noise if noise is None else noise}


def _what(model) -> str:
    return f"{model.path}" if model.path else f"this {model.kind} model"


def check_sigmas(model, sigmas: list[float], final_zero: bool) -> None:
    """Refuse noise levels outside the model's [sigma_min, sigma_max] (a final 0 is allowed for ODE solvers)."""
    from ctmtool.schedules import check_schedule

    try:
        check_schedule(sigmas[:-1] if final_zero and len(sigmas) > 2 and sigmas[-1] == 0 else sigmas)
    except ValueError as err:
        raise UserError(f"`sigmas`: {err}") from None
    lo, hi = model.sigma_min, model.sigma_max
    inner = sigmas[:-1] if final_zero and sigmas and sigmas[-1] == 0 else sigmas
    bad = [v for v in inner if not lo * (1 - 1e-6) <= v <= hi * (1 + 1e-6)]
    if bad:
        raise UserError(f"`sigmas` {bad} outside the model's range [{lo:g}, {hi:g}]; give levels inside it")


def nfe_used(options: dict, schedule: torch.Tensor) -> int:
    """Network evaluations of one sample with these options and this schedule."""
    from ctmtool.solvers import solver_nfe

    steps = len(schedule) - 1
    return steps if options["solver"] == "gamma" else solver_nfe(options["solver"], steps, float(schedule[-1]) == 0.0)


def available_memory() -> int | None:
    """Bytes of memory free for new allocations on this machine (None when the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n: int, shape: tuple[int, ...], what: str = "`n`", copies: int = 2) -> None:
    """Refuse to hold `n` float32 items of `shape` (`copies` times) when that exceeds the free memory."""
    need = n * math.prod(shape) * 4 * copies
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise UserError(f"{n} items of shape {tuple(shape)} need about {need / 2**30:.1f} GiB, more than the "
                        f"{free / 2**30:.1f} GiB of free memory; lower {what}")


def _out_of_memory(err: BaseException) -> UserError:
    return UserError(f"out of memory ({type(err).__name__}); lower `batch` (items per forward pass)")


def draw(model, n: int, *, seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
         options: dict, progress: Advance = None, program=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` samples (and labels, None for unconditional models) on the CPU; sample i uses seed + i; `program`:
    a traced solve of full batches (`ctmtool.fastpath`)."""
    from ctmtool.sampling import generate

    if n < 1 or batch < 1:
        raise UserError(f"`n` and `batch` must be at least 1 (got {n} and {batch})")
    check_memory(n, model.data_shape)
    xs, ys = [], []
    try:
        for x, y in generate(model, n, seed=seed, batch=batch, device=device, progress=progress, program=program,
                             **options):
            xs.append(x.cpu())
            ys.append(None if y is None else y.cpu())
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise _out_of_memory(err) from None
    labels = None if ys[0] is None else torch.cat(ys)
    return torch.cat(xs), labels


@dataclass
class Samples:
    x: torch.Tensor  # (n, *data_shape) on the CPU; images in [-1, 1]
    labels: torch.Tensor | None  # class labels of a conditional model
    n: int
    seed: int
    options: dict  # the sampler settings used (`sample_options`)
    schedule: list[float]  # the noise levels visited
    nfe: int  # network evaluations per sample
    seconds: float

    def summary(self) -> dict:
        o = self.options
        return {"n": self.n, "seed": self.seed, "solver": o["solver"], "nfe": self.nfe,
                "gamma": o["gamma"] if o["solver"] == "gamma" else None, "schedule": self.schedule,
                "class": o["class_label"], "seconds": round(self.seconds, 3),
                "samples_per_second": round(self.n / max(self.seconds, 1e-9), 1)}


def sample(model, *, n: int | None = None, seed: int | None = None, batch: int | None = None,
           device: torch.device | str = "cpu", progress: Advance = None, distributed: bool = False,
           fast: bool = True, log=None, **options) -> Samples | None:
    """Draw samples with `sample_options(model, **options)`; n, seed and batch default to the preset's [sample].

    distributed: under torchrun every rank draws its own index range and rank 0 gets all samples (others None).
    fast: on the CPU, `ctmtool.fastpath.choose_sampling` picks a cache-sized batch (where none is given) and a
    traced solve; `log` receives the choice in one line."""
    import time

    from ctmtool.fastpath import choose_and_build
    from ctmtool.sampling import distributed_generate, resolve_schedule

    s = model.preset.sample
    n, seed = s.n if n is None else n, s.seed if seed is None else seed
    if n < 1 or (batch is not None and batch < 1):
        raise UserError(f"`n` and `batch` must be at least 1 (got {n} and {batch})")
    opts = sample_options(model, **options)
    program = None
    if distributed:
        batch = s.batch if batch is None else batch
    else:
        batch, program = choose_and_build(model, device, n, batch, opts, fast, log)
    schedule = resolve_schedule(model, opts["solver"], opts["nfe"], opts["steps"], opts["sigmas"])
    t0 = time.time()
    if distributed:
        check_memory(n, model.data_shape)
        x, labels = distributed_generate(model, n, seed, batch, device, **opts), None  # labels are not gathered
        if x is None:
            return None
        x = x.cpu()
    else:
        x, labels = draw(model, n, seed=seed, batch=batch, device=device, options=opts, progress=progress,
                         program=program)
    return Samples(x, labels, n, seed, opts, [round(float(v), 6) for v in schedule], nfe_used(opts, schedule),
                   time.time() - t0)


def _batched(fn, x: torch.Tensor, model, seed: int, batch: int, device, progress: Advance) -> torch.Tensor:
    """fn(x_batch, noise, lo, hi) over batches of x; item i's noise stream is seeded with seed + i."""
    from ctmtool.sampling import ImageNoise

    if len(x) < 1 or batch < 1:
        raise UserError(f"nothing to do: {len(x)} items, `batch` {batch}")
    outs = []
    try:
        for lo in range(0, len(x), batch):
            hi = min(len(x), lo + batch)
            noise = ImageNoise(list(range(seed + lo, seed + hi)), model.data_shape, device)
            outs.append(fn(x[lo:hi].to(device), noise, lo, hi).cpu())
            if progress is not None:
                progress(hi - lo)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise _out_of_memory(err) from None
    return check_finite(torch.cat(outs), "the model's outputs", "the checkpoint's weights may hold NaN/inf")


def translate_items(model, x: torch.Tensor, *, nfe: int = 1, gamma: float = 0.0, seed: int = 0, batch: int = 256,
                    device: torch.device | str = "cpu", progress: Advance = None) -> torch.Tensor:
    """GCTM translation of every row of x (GCTM paper, Sec. 4: one jump G(x1, 1, 0) when nfe = 1)."""
    from ctmtool.gctm.translate import translate

    check_translatable(model, nfe, gamma)
    return _batched(lambda xb, noise, lo, hi: translate(model, xb, nfe=nfe, gamma=gamma, noise=noise),
                    x, model, seed, batch, device, progress)


def check_translatable(model, nfe: int = 1, gamma: float = 0.0) -> None:
    """Refuse a model that is not a GCTM, and Gaussian re-noising of a GCTM whose source is not Gaussian."""
    if nfe < 1:
        raise UserError(f"`nfe` must be at least 1, got {nfe}")
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"`gamma` must be in [0, 1], got {gamma}")
    if not (model.is_trajectory and not model.net.has_density):  # a GCTM: transport between two distributions
        raise UserError(f"{_what(model)} is a {model.kind} checkpoint; translation needs a GCTM (train one with "
                        "`ctmtool distill --preset toy-translate` or another GCTM preset); a CTM can edit images (`ctmtool translate edit`, `editing.sdedit`)")
    if gamma > 0 and nfe > 1 and not model.net.gaussian_source:
        raise UserError(f"`gamma` > 0 re-noises with Gaussian noise, which only fits a Gaussian source; this GCTM's "
                        f"coupling is {model.preset.gctm.coupling!r}: use `gamma` 0")


def edit_items(model, x: torch.Tensor, level: float, *, strokes: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, keep_unmasked: bool = False, nfe: int = 1, gamma: float = 0.0,
               seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
               progress: Advance = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) of every row of x from `level`, or stroke editing when `strokes` are given."""
    from ctmtool.editing import sdedit, stroke_edit

    def one(xb, noise, lo, hi):
        if strokes is None:
            return sdedit(model, xb, level, noise=noise, nfe=nfe, gamma=gamma)
        mb = None if mask is None else mask[lo:hi].to(xb.device)
        return stroke_edit(model, xb, strokes[lo:hi].to(xb.device), mb, level, noise=noise, nfe=nfe, gamma=gamma,
                           keep_unmasked=keep_unmasked)

    return _batched(one, x, model, seed, batch, device, progress)


def check_finite(x: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """Refuse NaN or infinite values, naming where they are."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.flatten(1) if x.ndim > 1 else x)).any(-1).sum()) if x.ndim > 1 else 1
        raise UserError(f"{what} hold NaN or infinite values (items with them: {bad}); {fix}")
    return x


def check_model_finite(model) -> None:
    """Refuse a model whose weights hold NaN or infinite values (an edited or damaged checkpoint)."""
    bad = [name for name, t in model.net.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"checkpoint {model.path} holds NaN or infinite weights ({bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); use another checkpoint")
