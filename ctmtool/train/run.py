"""Whole training runs, callable from Python: `train(preset, role, run_dir, device)` for teacher, CTM and
GCTM.

`role` is "teacher" (an EDM denoiser) or "distill" (a trajectory model). For "distill" the choice between
CTM and GCTM is made once, here: a preset with a [gctm] section trains a GCTM (`ctmtool.train.gctm_run`), any
other a CTM student of a teacher. Each builder returns `RunParts`; the run directory, torchrun, resume, the
loop and the final snapshot are the same for all three.
"""

from __future__ import annotations

import math
import signal
from contextlib import nullcontext
from pathlib import Path

import torch

from ctmtool.checkpoint import Checkpoint, load_checkpoint
from ctmtool.config import Preset
from ctmtool.core import distributed as ddp
from ctmtool.core.models import Model, analytic_model, load_model
from ctmtool.data import load_dataset
from ctmtool.data.base import Dataset
from ctmtool.device import cpu_threads
from ctmtool.errors import Interrupted, UserError
from ctmtool.jobs.run_dirs import analytic_preset, checkpoint_file
from ctmtool.nets.discriminator import Discriminator, VectorDiscriminator, load_backbone
from ctmtool.nets.projected_gan import ProjectedDiscriminator
from ctmtool.progress import Quiet
from ctmtool.train.gctm_run import gctm_parts
from ctmtool.train.loop import FitResult, fit
from ctmtool.train.record import RunRecord
from ctmtool.train.rundir import RunLock, make_run_dir
from ctmtool.train.setup import (
    RunParts,
    check_labels,
    gmm_evaluator,
    prepare_run_dir,
    rank_setup,
    sample_snapshotter,
)
from ctmtool.train.teacher_objective import TeacherObjective
from ctmtool.train.trajectory import ctm_objective

ROLES = ("teacher", "distill")


def train(preset: Preset, role: str, run_dir: str | Path, device: torch.device, rep=None, *,
          teacher: str | None = None, data: Dataset | None = None, data_path: str | None = None,
          resume: bool | str = False, force: bool = False) -> FitResult:
    """Train a teacher (role "teacher") or a trajectory model (role "distill": GCTM for presets with [gctm],
    else CTM from `teacher`); checkpoints and sample pictures go to `run_dir`.

    resume: True continues the newest checkpoint, "auto" does so when there is one. Under torchrun every rank
    computes its rows of each batch and rank 0 writes. `rep` reports progress (`ctmtool.progress`). A run
    stopped by SIGINT/SIGTERM saves, then raises `Interrupted` (exit code 128 + the signal number on the
    command line)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
    if role == "distill" and preset.gctm is not None and preset.gan.enabled:
        raise UserError(f"gan.enabled = true does nothing for preset {preset.name!r}: GCTM training ([gctm]) "
                        "has no GAN term; drop gan.enabled")
    if role == "teacher":
        build = _teacher_parts
    elif preset.gctm is not None:
        build = gctm_parts
    else:
        build = _ctm_parts
    run_dir = Path(run_dir)
    device, rep = rank_setup(device, rep or Quiet())
    if resume is not True:  # a new run: an unusable folder is found before the data and networks are built
        make_run_dir(run_dir)
    # one lock from before the folder is inspected until the run ends: a second run into it is refused before
    # it reads, deletes or rotates anything
    with RunLock(run_dir) if run_dir.is_dir() and ddp.is_main() else nullcontext():
        return _train_locked(build, preset, run_dir, device, rep, teacher, data, data_path, resume, force)


def _train_locked(build, preset: Preset, run_dir: Path, device, rep, teacher, data, data_path, resume,
                  force) -> FitResult:
    resume_path = prepare_run_dir(run_dir, resume, force, locked=True)
    resume_ckpt = load_checkpoint(resume_path) if resume_path else None
    if ddp.is_main():  # log.txt and stats.jsonl in the run directory (rank 0 writes)
        rep = RunRecord(run_dir, rep, fresh=resume_path is None)
    parts = build(preset, device, rep, run_dir, data=data, data_path=data_path, teacher=teacher,
                  resume=resume_ckpt)
    rep.log(parts.describe)
    with cpu_threads(device, parts.objective.net):
        result = fit(parts.objective, parts.data, parts.cfg, run_dir, rep, device=device, xflip=parts.xflip,
                     resume=resume_ckpt, snapshot=parts.snapshot, evaluate=parts.evaluate, locked=True)
    if result.signum:  # saved; a job scheduler must still see that the run did not finish
        raise Interrupted(f"training stopped by {signal.Signals(result.signum).name} at {result.kimg:.3f} "
                          f"kimg (step {result.steps}); saved {result.checkpoint}; continue it with "
                          "`resume`", result.signum)
    result.last["total_seconds"] = round(result.total_seconds, 1)  # over every session of the run
    if ddp.is_main():
        result.last["samples_png"] = str(parts.snapshot(result.steps))
    return result


def _params(net: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters"


def _teacher_parts(preset: Preset, device, rep, run_dir: Path, *, data=None, data_path=None, teacher=None,
                   resume: Checkpoint | None = None) -> RunParts:
    """EDM training of a denoiser on the preset's data."""
    if teacher is not None:
        raise UserError("a teacher is trained from data, not from another teacher; drop `teacher`")
    data = data if data is not None else load_dataset(preset.data, path=data_path)
    check_labels(preset, data)
    rep.log(f"data: {data.name}, {len(data)} items of shape {data.shape}")
    obj = TeacherObjective(preset, data.shape, device)
    return RunParts(obj, data, preset.teacher, sample_snapshotter(obj, preset, data.shape, run_dir),
                    gmm_evaluator(obj, preset), preset.data.xflip,
                    f"teacher: {preset.net.kind}, {_params(obj.net)}, device {device}")


def resolve_teacher(preset: Preset, teacher: str | None, device: torch.device,
                    rep=None) -> tuple[Preset, Model | None]:
    """The teacher model and the preset the student must use (the teacher's network and diffusion settings);
    `rep` is told when those replace what the preset says."""
    mode = preset.ctm.teacher
    if teacher is None:
        if mode == "analytic":
            return preset, analytic_model(analytic_preset(preset))
        if mode == "self":
            return preset, None
        if preset.ctm.teacher_hint:
            raise UserError(f"preset {preset.name!r} distills from a network teacher: get "
                            f"{preset.ctm.teacher_hint}")
        raise UserError(f"preset {preset.name!r} distills from a network teacher: give a `teacher` "
                        "checkpoint (train one with `ctmtool teacher`, or import an EDM pickle with `ctmtool "
                        "import`), or set ctm.teacher='self' to train without one")
    model = load_model(checkpoint_file(teacher), which="ema", device=device)
    if model.kind != "teacher":
        raise UserError(f"`teacher` {teacher} is a {model.kind} checkpoint; distillation needs a teacher "
                        "(denoiser) checkpoint")
    for section in ("net", "diffusion"):
        ours, theirs = getattr(preset, section), getattr(model.preset, section)
        if ours != theirs and rep is not None:
            changed = sorted(k for k in type(ours).model_fields if getattr(ours, k) != getattr(theirs, k))
            rep.warn(f"the student takes the teacher's [{section}] settings ({', '.join(changed)} differ "
                     f"from preset {preset.name!r}): the student's network must match the teacher's weights")
    student_preset = preset.model_copy(update={"net": model.preset.net, "diffusion": model.preset.diffusion})
    if mode != "network":
        student_preset = student_preset.model_copy(
            update={"ctm": preset.ctm.model_copy(update={"teacher": "network"})})
    return Preset.model_validate(student_preset.model_dump()), model


def _ctm_parts(preset: Preset, device, rep, run_dir: Path, *, data=None, data_path=None, teacher=None,
               resume: Checkpoint | None = None) -> RunParts:
    """CTM distillation (Kim et al. 2024): student initialised from the teacher, trained with CTM + DSM (+
    GAN)."""
    preset, teacher_model = resolve_teacher(preset, teacher, device, rep)
    data = data if data is not None else load_dataset(preset.data, path=data_path)
    check_labels(preset, data)
    if teacher_model is not None and tuple(teacher_model.data_shape) != tuple(data.shape):
        raise UserError(f"the teacher was trained on items of shape {teacher_model.data_shape} but the data "
                        f"has {data.shape}")
    init_state = (teacher_model.net.state_dict() if teacher_model is not None
                  and teacher_model.kind == "teacher" else None)
    disc = _discriminator(preset, data) if preset.gan.enabled else None
    obj = ctm_objective(preset, data.shape, device, teacher_model.net if teacher_model else None, init_state,
                        discriminator=disc)
    who = teacher if teacher else preset.ctm.teacher
    return RunParts(obj, data, preset.distill, sample_snapshotter(obj, preset, data.shape, run_dir),
                    gmm_evaluator(obj, preset), preset.data.xflip,
                    f"distill: student {_params(obj.net)}, teacher {who}, data {data.name} ({len(data)} "
                    f"items), device {device}")


def _discriminator(preset: Preset, data: Dataset):
    if not data.is_image:
        if preset.gan.backbone:
            raise UserError("gan.backbone is an image feature network; vector data trains its discriminator "
                            "from scratch: remove gan.backbone")
        return VectorDiscriminator(math.prod(data.shape), hidden=preset.gan.channels * 4)
    if preset.gan.discriminator == "projected":  # the paper's Projected GAN (nets/projected_gan.py)
        return ProjectedDiscriminator(weights_dir=preset.gan.feature_weights)
    backbone = load_backbone(preset.gan.backbone) if preset.gan.backbone else None
    c, h, _ = data.shape
    return Discriminator(c, h, backbone=backbone, channels=preset.gan.channels)
