"""Building models from presets and rebuilding them from checkpoints.

A `Model` is a preconditioned network ready to use: `.net` is an `EDMPrecond`/`VPPrecond`/`VEPrecond`
(teacher), `CTMPrecond` (ctm), `GCTMPrecond` (gctm) or the analytic `GaussianMixture`; every one has
`denoise(x, sigma, labels)`, and trajectory models also `jump(x, t, s, labels)` and `g(x, t, s, labels)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ctmtool.checkpoint import Checkpoint, load_checkpoint, load_state
from ctmtool.config import Preset
from ctmtool.core.analytic import GaussianMixture
from ctmtool.core.precond import CTMPrecond, EDMPrecond, GCTMPrecond, VEPrecond, VPPrecond
from ctmtool.gctm.couplings import GAUSSIAN_SOURCES, coupling_kind
from ctmtool.nets import build_net

# parameters that exist only in the s-enabled (student) network
S_LAYER_PREFIXES = ("map_s", "affine_s", "time_embed_s", "emb_layers_s")


@dataclass
class Model:
    kind: str  # teacher | ctm | gctm | analytic
    net: nn.Module  # the preconditioned network (its raw network F is `net.net`)
    preset: Preset
    data_shape: tuple[int, ...]  # (C, H, W) or (D,)
    meta: dict = field(default_factory=dict)  # checkpoint metadata (progress, moments, ...)
    path: Path | None = None

    @property
    def is_trajectory(self) -> bool:
        return self.kind in ("ctm", "gctm")

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    @property
    def label_dim(self) -> int:
        return self.preset.net.label_dim

    @property
    def sigma_min(self) -> float:
        return float(self.net.sigma_min)

    @property
    def sigma_max(self) -> float:
        return float(self.net.sigma_max)

    # The model where the library (or k-diffusion-style code) expects one: model(x, t, s) is the jump.
    def __call__(self, x: torch.Tensor, t, s=None, labels=None) -> torch.Tensor:
        """A trajectory model's jump G(x_t, t, s) (s = None: to the last level of its schedule, sigma_min for
        a CTM, 0 for a GCTM, whose t, s lie in [0, 1]); a teacher's denoiser D(x, t) (s must be None)."""
        if not self.is_trajectory:
            if s is not None:
                raise ValueError(f"{self.path or 'this model'} is a {self.kind} (a denoiser D(x, sigma)): "
                                 "call it as model(x, sigma); the jump model(x, t, s) needs a CTM or a GCTM")
            return self.net.denoise(x, t, labels)
        return self.net.jump(x, t, float(self.net.default_schedule(1)[-1]) if s is None else s, labels)

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        return self.net.jump(x, t, s, labels)

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        return self.net.denoise(x, sigma, labels)

    def renoise(self, x: torch.Tensor, s, t, z: torch.Tensor) -> torch.Tensor:
        return self.net.renoise(x, s, t, z)

    def perturb(self, x0: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
        return self.net.perturb(x0, t, z)

    def sigmas(self, nfe: int = 1) -> torch.Tensor:
        """The trajectory model's own schedule for `nfe` jumps (from sigma_max down to the last level)."""
        return self.net.default_schedule(nfe)


# checkpoint kind -> the trajectory model class that rebuilds it (`TrajectoryModel.from_preset`)
TRAJECTORY_MODELS = {cls.checkpoint_kind: cls for cls in (CTMPrecond, GCTMPrecond)}


def build_precond(kind: str, preset: Preset, data_shape: tuple[int, ...],
                  meta: dict | None = None) -> nn.Module:
    """A freshly initialised preconditioned network of the given kind."""
    d = preset.diffusion
    if kind == "teacher":
        net = build_net(preset.net, data_shape, use_s=False)
        if d.precond == "vp":
            return VPPrecond(net, sigma_data=d.sigma_data, sigma_min=d.sigma_min, sigma_max=d.sigma_max)
        if d.precond == "ve":
            return VEPrecond(net, sigma_min=d.sigma_min, sigma_max=d.sigma_max, sigma_data=d.sigma_data)
        return EDMPrecond(net, d.sigma_data, d.sigma_min, d.sigma_max)
    trajectory = TRAJECTORY_MODELS.get(kind)
    if trajectory is not None:
        g = preset.gctm
        gaussian = g is None or coupling_kind(g.coupling) in GAUSSIAN_SOURCES
        return trajectory.from_preset(build_net(preset.net, data_shape, use_s=True), preset, meta or {},
                                      gaussian)
    raise ValueError(f"unknown model kind {kind!r}")


def analytic_problem(preset: Preset) -> str | None:
    """Why `preset` has no analytic model (its data is not a toy Gaussian mixture), else None: the jobs layer
    refuses a user's preset with this message before `analytic_model` is called."""
    if preset.data.source != "toy" or preset.data.toy != "gmm" or preset.data.gmm is None:
        return (f"preset {preset.name!r} has no Gaussian-mixture data; the analytic teacher needs "
                "data.toy = 'gmm'")
    return None


def analytic_model(preset: Preset) -> Model:
    """The exact Gaussian-mixture denoiser of a toy GMM preset (a ValueError for any other preset:
    `analytic_problem`)."""
    problem = analytic_problem(preset)
    if problem is not None:
        raise ValueError(problem)
    d = preset.diffusion
    gmm = GaussianMixture.from_config(preset.data.gmm, d.sigma_min, d.sigma_max)
    return Model("analytic", gmm, preset, gmm.shape)


def model_from_checkpoint(ckpt: Checkpoint, which: str = "ema", device: str | torch.device = "cpu") -> Model:
    """Rebuild the network a checkpoint describes and load its `which` weights (ema, net, ema_0.9999, ...).

    The header's network (kind, widths, levels, data shape) is first built on the meta device, where nothing
    is allocated, and checked against the stored tensors: a header edited to describe a network of terabytes
    is refused before any memory is taken."""
    state = ckpt.state(which)
    with torch.device("meta"):
        probe = build_precond(ckpt.kind, ckpt.preset, ckpt.data_shape, ckpt.meta)
    load_state(probe, state, source=f"{ckpt.path} [{which}]", check_only=True)
    net = build_precond(ckpt.kind, ckpt.preset, ckpt.data_shape, ckpt.meta)
    load_state(net, ckpt.state(which), source=f"{ckpt.path} [{which}]")
    net.to(device).eval().requires_grad_(False)
    return Model(ckpt.kind, net, ckpt.preset, ckpt.data_shape, ckpt.meta, ckpt.path)


def load_model(path: str | Path, which: str = "ema", device: str | torch.device = "cpu") -> Model:
    """Load a ctmtool checkpoint (or the newest one in a run directory) as a ready-to-use model."""
    path = Path(path)
    if path.is_dir():
        path = newest_checkpoint(path)
    ckpt = load_checkpoint(path, groups=[which])
    return model_from_checkpoint(ckpt, which, device)


def student_from_teacher(teacher_state: dict[str, torch.Tensor], preset: Preset, data_shape: tuple[int, ...],
                         source: str = "teacher") -> CTMPrecond:
    """A CTM student initialised from the teacher's weights by name; the s-layers keep their fresh init."""
    student = build_precond("ctm", preset, data_shape)
    load_state(student, teacher_state, source=source, allow_missing=S_LAYER_PREFIXES)
    return student


def newest_checkpoint(run_dir: str | Path) -> Path:
    """The most recently written *.safetensors in a run directory (used when --ckpt is omitted); a ValueError
    when there is none (`ctmtool.jobs.run_dirs.checkpoint_file` refuses a user's path with its message)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []
    if not files:
        raise ValueError(f"no checkpoint (*.safetensors) in {run_dir}; pass `ckpt` or a `run_dir` with a "
                         "finished run")
    return files[-1]
