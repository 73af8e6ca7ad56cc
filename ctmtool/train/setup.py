"""What every training run needs before and after the loop: the run directory, torchrun ranks, label checks,
snapshots and evaluations. Used by `ctmtool.train.run` (teacher, CTM) and `ctmtool.train.gctm_run` (GCTM)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ctmtool.config import Preset, TrainConfig
from ctmtool.core import distributed as ddp
from ctmtool.core.models import Model, analytic_model
from ctmtool.core.sampling import SamplingPlan, default_schedule, generate, teacher_schedule
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.jobs.items import join_process_group
from ctmtool.jobs.plots import preset_view, save_samples_png
from ctmtool.metrics.quality import make_scorer
from ctmtool.progress import Quiet
from ctmtool.train.rundir import CKPT_GLOB, RunLock, make_run_dir


@dataclass
class RunParts:
    """Everything `ctmtool.train.run.train` hands to the loop for one run."""

    objective: object                   # TeacherObjective | TrajectoryObjective
    data: Dataset                       # what the loop draws batches from
    cfg: TrainConfig                    # duration, batch, optimiser
    snapshot: Callable[[int], Path]     # writes a sample picture for a step
    evaluate: Callable[[], dict] | None = None  # quality metric, when one exists for the data
    xflip: bool = False                 # random horizontal flips of the loop's batches
    describe: str = ""                  # one line for the log


def prepare_run_dir(run_dir: str | Path, resume: bool | str, force: bool,
                    locked: bool = False) -> Path | None:
    """Return the checkpoint to resume from (or None); refuse to train over an existing run without a flag.

    resume="auto" continues the run when the directory holds checkpoints and starts a new one otherwise. A run
    directory that a live process holds is refused before anything in it is read or deleted. `locked`: the
    caller already holds the directory's `RunLock` (and keeps it for the whole run)."""
    run_dir = Path(run_dir)
    if resume is not True:  # a new run: an unusable folder is found before the data and networks are built
        make_run_dir(run_dir)
    elif run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"`run_dir` {run_dir} is a file, not a directory; choose another `run_dir`")
    with RunLock(run_dir) if run_dir.is_dir() and ddp.is_main() and not locked else nullcontext():
        existing = sorted(run_dir.glob(CKPT_GLOB)) if run_dir.is_dir() else []
        if resume == "auto":
            return existing[-1] if existing else None
        if resume:
            if not existing:
                raise UserError(f"`resume`: no checkpoint in {run_dir} to resume from; start a new run "
                                "without `resume`")
            return existing[-1]
        if existing and not force:
            raise UserError(f"run directory {run_dir} already holds checkpoints; `resume` to continue it, "
                            "`force` to start over, or choose another `run_dir`")
        if existing and force and ddp.is_main():
            for f in existing:
                f.unlink(missing_ok=True)
    ddp.barrier()
    return None


def rank_setup(device: torch.device, rep):
    """Join torchrun's process group if there is one; rank 0 keeps the reporter, the others stay quiet."""
    device = join_process_group(device)
    if not ddp.is_main():
        rep = Quiet()
    elif ddp.is_distributed():
        rep.log(f"distributed: {ddp.world_size()} ranks, backend {torch.distributed.get_backend()}")
    return device, rep


def check_labels(preset: Preset, data: Dataset) -> None:
    """A conditional preset needs labelled data with at most net.label_dim classes."""
    if preset.net.label_dim and data.labels is None:
        raise UserError(f"preset {preset.name!r} is class-conditional (net.label_dim = "
                        f"{preset.net.label_dim}) but {data.name} has no labels; use class sub-folders or "
                        "set net.label_dim = 0")
    if preset.net.label_dim and data.num_classes > preset.net.label_dim:
        raise UserError(f"{data.name} has {data.num_classes} classes but net.label_dim is "
                        f"{preset.net.label_dim}")


def _one_step(objective, preset: Preset, data_shape, n: int, seed: int) -> torch.Tensor:
    """n samples of the objective's sampling model: NFE 1 for trajectory models, Heun on 18 levels for a
    teacher."""
    model = Model(objective.kind, objective.sampling_model(), preset, tuple(data_shape))
    solver = "gamma" if model.is_trajectory else "heun"
    dev = next(objective.sampling_model().parameters()).device
    plan = SamplingPlan(solver,
                        default_schedule(model, 1) if model.is_trajectory else teacher_schedule(model, 18),
                        batch=n)  # fixed settings, nothing from the user to check
    return torch.cat([x.cpu() for x, _ in generate(model, n, plan, seed=seed, device=dev)])


def sample_snapshotter(objective, preset: Preset, data_shape, run_dir: Path, n: int = 64):
    """A picture of fixed-seed samples (64 images, or 4,096 points for vector data) per call."""
    def snapshot(step: int) -> Path:
        count = n if len(data_shape) == 3 else 4096
        xs = _one_step(objective, preset, data_shape, count, seed=0)
        path = run_dir / f"samples-{step:08d}.png"
        try:
            _, extent = preset_view(preset)  # one range for every picture of the run
            what = "one-step samples" if objective.kind != "teacher" else "Heun samples (18 levels)"
            return save_samples_png(xs, path, len(data_shape) == 3, title=f"step {step}: {count} {what}",
                                    extent=extent)
        except OSError as err:
            raise UserError(f"could not write sample picture {path}: {err.strerror or err}; check free space "
                            "and permissions") from None

    return snapshot


def gmm_evaluator(objective, preset: Preset, n: int = 65536):
    """For Gaussian-mixture data: the mean log-density of n generated points (seeds 0..n-1) under the true
    mixture, and its gap to true samples' (10^6 draws): the measure of docs/results.md and bench/first_run.py,
    standard error about 0.007 nats for a CTM; a diverged run shows as a gap of many nats. Else None."""
    if not (preset.data.source == "toy" and preset.data.toy == "gmm"):
        return None
    gmm = analytic_model(preset).net
    # at the first call (~1 s)
    truth = functools.cache(lambda: make_scorer("logp", preset)[2]["true_samples_logp"])

    def evaluate() -> dict:
        logp = float(gmm.log_prob(_one_step(objective, preset, gmm.shape, n, seed=0)).mean())
        return {"logp_samples": logp, "logp_gap": logp - truth()}

    return evaluate
