"""Where runs live and which checkpoint a command uses when none is named: one rule for every command.

The rule (`find_checkpoint`): an explicit `ckpt` (a file, or a run directory: its newest checkpoint);
else the newest checkpoint in `run_dir`; else the newest checkpoint in `runs/toy/ctm`, the run directory
`ctmtool distill` writes with its default preset (`default_run_dir`). Nothing else is searched: a
checkpoint from another run is never picked by accident. When nothing is found, the error lists the
run directories under `runs/` that hold checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from ctmtool.config import load_preset
from ctmtool.core.models import analytic_model, analytic_problem, load_model, newest_checkpoint
from ctmtool.errors import UserError
from ctmtool.jobs.items import check_model_finite

RUNS = Path("runs")
DEFAULT_PRESET = "toy"
SUFFIX = ".safetensors"


def default_run_dir(preset: str = DEFAULT_PRESET, role: str = "ctm") -> Path:
    """runs/<preset>/<role>: where `ctmtool teacher` (role teacher) and `ctmtool distill` (ctm, gctm)
    write."""
    return RUNS / preset / role


def _runs_with_checkpoints(limit: int = 4) -> str:
    found = sorted({p.parent for p in RUNS.glob(f"*/*/*{SUFFIX}")}) if RUNS.is_dir() else []
    if not found:
        return ""
    shown = ", ".join(str(p) for p in found[:limit]) + (", ..." if len(found) > limit else "")
    return f" (run directories with checkpoints: {shown})"


def newest_in(run_dir: str | Path) -> Path:
    """The most recently written checkpoint in one run directory (`models.newest_checkpoint`), or an error
    that lists the run directories that do hold checkpoints."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; give `run_dir` a folder or `ckpt` the "
                        "file")

    try:
        return newest_checkpoint(run_dir)
    except ValueError:
        raise UserError(f"no checkpoint (*{SUFFIX}) in {run_dir}; pass `ckpt` FILE or `run_dir` DIR of a "
                        f"finished run{_runs_with_checkpoints()}") from None


def checkpoint_file(path: str | Path) -> Path:
    """`path` as given, or for a run directory its newest checkpoint (`models.newest_checkpoint`); a directory
    without one is refused (UserError) before `models.load_model` is called."""
    path = Path(path)
    if not path.is_dir():
        return path
    try:
        return newest_checkpoint(path)
    except ValueError as err:
        raise UserError(str(err)) from None


def analytic_preset(preset):
    """A loaded preset the analytic mixture can be built from (`models.analytic_model`), else a UserError."""
    problem = analytic_problem(preset)
    if problem is not None:
        raise UserError(problem)
    return preset


def find_checkpoint(ckpt: str | Path | None = None, run_dir: str | Path | None = None) -> tuple[Path, str]:
    """(checkpoint path, how it was chosen) by the module's rule; the second item is for the user to read."""
    if ckpt is not None:
        ckpt = Path(ckpt)
        if ckpt.is_dir():
            return newest_in(ckpt), f"newest in {ckpt}"
        if not ckpt.exists():
            raise UserError(f"checkpoint {ckpt} does not exist; give a .safetensors file or a run directory")
        return ckpt, "given"
    if run_dir is not None:
        return newest_in(run_dir), f"newest in {run_dir}"
    default = default_run_dir()
    return newest_in(default), f"newest in {default}, the default run directory"


def open_model(ckpt: str | Path | None = None, run_dir: str | Path | None = None, which: str = "ema",
               device="cpu", *, analytic: bool = False, preset: str | None = None):
    """(Model, where it came from): the analytic mixture of `preset`, or a checkpoint found by
    `find_checkpoint`, its weights checked to be finite."""

    if analytic:
        if ckpt is not None or run_dir is not None:
            raise UserError("`analytic` and `ckpt`/`run_dir` exclude each other; give one model")
        if preset is None:
            raise UserError("`analytic` needs `preset` (a Gaussian-mixture preset such as toy)")
        model = analytic_model(analytic_preset(load_preset(preset)))
        model.net.to(device)
        return model, f"analytic:{model.preset.name}"
    if preset is not None:
        raise UserError("`preset` is only used with `analytic` (a checkpoint carries its own preset)")
    path, how = find_checkpoint(ckpt, run_dir)
    try:
        model = load_model(path, which=which, device=device)
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (ValueError, TypeError, KeyError) as err:  # a header edited into something no network matches
        raise UserError(f"{path} has an edited or damaged header ({err}); it cannot be used") from None
    check_model_finite(model)
    return model, f"checkpoint {path}" + (f" ({how})" if how != "given" else "")
