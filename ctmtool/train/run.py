"""Whole training runs, callable from Python: `train_teacher` and `distill` (the CLI calls these)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.config import Preset
from ctmtool.data import load_dataset
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.models import Model, analytic_model, load_model
from ctmtool.sampling import generate
from ctmtool.train import distributed as ddp
from ctmtool.train.loop import CKPT_GLOB, FitResult, fit
from ctmtool.train.objectives import CTMObjective, TeacherObjective
from ctmtool.visual import save_samples_png


def prepare_run_dir(run_dir: str | Path, resume: bool | str, force: bool) -> Path | None:
    """Return the checkpoint to resume from (or None); refuse to train over an existing run without a flag.

    resume="auto" continues the run when the directory holds checkpoints and starts a new one otherwise."""
    run_dir = Path(run_dir)
    existing = sorted(run_dir.glob(CKPT_GLOB)) if run_dir.is_dir() else []
    if resume == "auto":
        return existing[-1] if existing else None
    if resume:
        if not existing:
            raise UserError(f"--resume: no checkpoint in {run_dir} to resume from; drop --resume to start a new run")
        return existing[-1]
    if existing and not force:
        raise UserError(f"run directory {run_dir} already holds checkpoints; pass --resume to continue it, "
                        "--force to start over, or choose another --run-dir")
    if existing and force and ddp.is_main():
        for f in existing:
            f.unlink(missing_ok=True)
    ddp.barrier()
    return None


def _rank_setup(device: torch.device, rep):
    """Join torchrun's process group if there is one; rank 0 keeps the reporter, the others stay quiet."""
    from ctmtool.cli.common import Reporter

    device = ddp.setup(device)
    if not ddp.is_main():
        rep = Reporter(quiet=True)
    elif ddp.is_distributed():
        rep.log(f"distributed: {ddp.world_size()} ranks, backend {torch.distributed.get_backend()}")
    return device, rep


def _snapshotter(objective, kind: str, preset: Preset, data_shape, run_dir: Path, n: int = 64):
    def snapshot(step: int) -> Path:
        model = Model(kind, objective.sampling_model(), preset, tuple(data_shape))
        solver = "gamma" if kind in ("ctm", "gctm") else "heun"
        count = n if len(data_shape) == 3 else 4096
        dev = next(objective.sampling_model().parameters()).device
        xs = torch.cat([x for x, _ in generate(model, count, seed=0, batch=count, device=dev, solver=solver,
                                               nfe=1, steps=18)])
        return save_samples_png(xs.cpu(), run_dir / f"samples-{step:08d}.png", model.is_image)

    return snapshot


def gmm_quality(preset: Preset, objective, kind: str, n: int = 4096) -> callable:
    """For Gaussian-mixture data: mean log-density of generated points under the true mixture."""
    gmm = analytic_model(preset).net

    def evaluate() -> dict:
        model = Model(kind, objective.sampling_model(), preset, gmm.shape)
        solver = "gamma" if kind in ("ctm", "gctm") else "heun"
        xs = torch.cat([x.cpu() for x, _ in generate(model, n, seed=12345, batch=n, solver=solver, nfe=1,
                                                      device=next(objective.sampling_model().parameters()).device)])
        return {"logp_samples": float(gmm.log_prob(xs).mean())}

    return evaluate


def _evaluator(preset: Preset, objective, kind: str):
    if preset.data.source == "toy" and preset.data.toy == "gmm":
        return gmm_quality(preset, objective, kind)
    return None


def train_teacher(preset: Preset, run_dir: str | Path, rep, device: torch.device, data: Dataset | None = None,
                  data_path: str | None = None, resume: bool | str = False, force: bool = False) -> FitResult:
    """Train an EDM denoiser on the preset's data; checkpoints and sample grids go to `run_dir`."""
    run_dir = Path(run_dir)
    device, rep = _rank_setup(device, rep)
    resume_path = prepare_run_dir(run_dir, resume, force)
    data = data if data is not None else load_dataset(preset.data, path=data_path)
    _check_labels(preset, data)
    rep.log(f"data: {data.name}, {len(data)} items of shape {data.shape}")
    obj = TeacherObjective(preset, data.shape, device)
    rep.log(f"teacher: {preset.net.kind}, {sum(p.numel() for p in obj.net.parameters()) / 1e6:.2f}M parameters, device {device}")
    resume_ckpt = load_checkpoint(resume_path) if resume_path else None
    snap = _snapshotter(obj, "teacher", preset, data.shape, run_dir)
    result = fit(obj, data, preset.teacher, run_dir, rep, device=device, xflip=preset.data.xflip, resume=resume_ckpt,
                 snapshot=snap, evaluate=_evaluator(preset, obj, "teacher"))
    if ddp.is_main():
        result.last["samples_png"] = str(snap(result.steps))
    return result


def resolve_teacher(preset: Preset, teacher: str | None, device: torch.device) -> tuple[Preset, Model | None]:
    """The teacher model and the preset the student must use (the teacher's network and diffusion settings)."""
    mode = preset.ctm.teacher
    if teacher is None:
        if mode == "analytic":
            return preset, analytic_model(preset)
        if mode == "self":
            return preset, None
        raise UserError(f"preset {preset.name!r} distills from a network teacher: pass --teacher CKPT "
                        "(train one with `ctmtool teacher`, or import an EDM pickle with `ctmtool teacher import`), "
                        "or set ctm.teacher='self' to train without one")
    model = load_model(teacher, which="ema", device=device)
    if model.kind != "teacher":
        raise UserError(f"--teacher {teacher} is a {model.kind} checkpoint; distillation needs a teacher (denoiser) checkpoint")
    student_preset = preset.model_copy(update={"net": model.preset.net, "diffusion": model.preset.diffusion})
    if mode != "network":
        student_preset = student_preset.model_copy(update={"ctm": preset.ctm.model_copy(update={"teacher": "network"})})
    return Preset.model_validate(student_preset.model_dump()), model


def distill(preset: Preset, run_dir: str | Path, rep, device: torch.device, teacher: str | None = None,
            data: Dataset | None = None, data_path: str | None = None, resume: bool | str = False,
            force: bool = False) -> FitResult:
    """CTM distillation (Kim et al. 2024): student initialised from the teacher, trained with CTM + DSM (+ GAN)."""
    if preset.gctm is not None:  # GCTM: no teacher; pairs come from preset.gctm.coupling
        from ctmtool.gctm.train import train_gctm

        return train_gctm(preset, run_dir, rep, device, data_path=data_path, resume=resume, force=force, data=data,
                          teacher=teacher)
    run_dir = Path(run_dir)
    device, rep = _rank_setup(device, rep)
    resume_path = prepare_run_dir(run_dir, resume, force)
    preset, teacher_model = resolve_teacher(preset, teacher, device)
    data = data if data is not None else load_dataset(preset.data, path=data_path)
    _check_labels(preset, data)
    if teacher_model is not None and tuple(teacher_model.data_shape) != tuple(data.shape):
        raise UserError(f"the teacher was trained on items of shape {teacher_model.data_shape} but the data has {data.shape}")
    init_state = None
    if teacher_model is not None and teacher_model.kind == "teacher":
        init_state = teacher_model.net.state_dict()
    disc = _discriminator(preset, data) if preset.gan.enabled else None
    obj = CTMObjective(preset, data.shape, device, teacher_model.net if teacher_model else None, init_state,
                       discriminator=disc)
    who = teacher if teacher else preset.ctm.teacher
    rep.log(f"distill: student {sum(p.numel() for p in obj.net.parameters()) / 1e6:.2f}M parameters, teacher {who}, "
            f"data {data.name} ({len(data)} items), device {device}")
    resume_ckpt = load_checkpoint(resume_path) if resume_path else None
    snap = _snapshotter(obj, "ctm", preset, data.shape, run_dir)
    result = fit(obj, data, preset.distill, run_dir, rep, device=device, xflip=preset.data.xflip, resume=resume_ckpt,
                 snapshot=snap, evaluate=_evaluator(preset, obj, "ctm"))
    if ddp.is_main():
        result.last["samples_png"] = str(snap(result.steps))
    return result


def _discriminator(preset: Preset, data: Dataset):
    from ctmtool.nets.discriminator import Discriminator, VectorDiscriminator, load_backbone

    if not data.is_image:
        if preset.gan.backbone:
            raise UserError("gan.backbone is an image feature network; vector data trains its discriminator from "
                            "scratch: remove gan.backbone")
        return VectorDiscriminator(math.prod(data.shape), hidden=preset.gan.channels * 4)
    if preset.gan.discriminator == "projected":  # the paper's Projected GAN (nets/projected_gan.py)
        from ctmtool.nets.projected_gan import ProjectedDiscriminator

        return ProjectedDiscriminator(weights_dir=preset.gan.feature_weights)
    backbone = load_backbone(preset.gan.backbone) if preset.gan.backbone else None
    c, h, _ = data.shape
    return Discriminator(c, h, backbone=backbone, channels=preset.gan.channels)


def _check_labels(preset: Preset, data: Dataset) -> None:
    if preset.net.label_dim and data.labels is None:
        raise UserError(f"preset {preset.name!r} is class-conditional (net.label_dim = {preset.net.label_dim}) "
                        f"but {data.name} has no labels; use class sub-folders or set net.label_dim = 0")
    if preset.net.label_dim and data.num_classes > preset.net.label_dim:
        raise UserError(f"{data.name} has {data.num_classes} classes but net.label_dim is {preset.net.label_dim}")
