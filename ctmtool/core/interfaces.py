"""The typed interfaces between the maths and its callers (typing.Protocol; docs/architecture.md, "The
trajectory interface"): what samplers, editing, translation and export call on a trajectory model, and what
the one trajectory objective (`ctmtool.train.trajectory.TrajectoryObjective`) calls on its training terms.

Implemented by `core/precond.py` (`CTMPrecond`, `GCTMPrecond`) and by `train/trajectory.CTMTerms` and
`train/gctm_objective.GCTMTerms`; tests/core/test_interfaces.py checks every implementation against them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Trajectory(Protocol):
    """A trajectory model G(x, t, s): jumps along the probability-flow ODE from time t to s."""

    has_density: bool  # g(x, t, t) denoises Gaussian noise: likelihood and ODE solvers work
    gaussian_source: bool  # trajectories start from Gaussian noise: it can generate and edit
    translates: bool  # its source is another distribution's samples (a GCTM)
    level_unit: str  # what its levels are: "sigma" (noise levels) or "t" (interpolation times)
    source_classes: int  # classes of a class-Gaussian source (GCTM coupling `latent`), else 0

    def g(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor: ...
    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor: ...
    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor: ...
    def default_schedule(self, nfe: int) -> torch.Tensor: ...
    def renoise(self, x: torch.Tensor, s: float, t: float, z: torch.Tensor) -> torch.Tensor: ...
    def perturb(self, x0: torch.Tensor, t: float, z: torch.Tensor) -> torch.Tensor: ...
    def prior(self, z: torch.Tensor) -> torch.Tensor: ...
    def strength_level(self, strength: float) -> float: ...
    def edit_schedule(self, level: float, nfe: int) -> torch.Tensor: ...
    def check_level(self, level: float) -> None: ...
    def move_latent(self, x: torch.Tensor, from_labels: torch.Tensor,
                    to_labels: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TrainingTerms(Protocol):
    """The loss terms a trajectory objective is given: every method `TrajectoryObjective` calls."""

    def new_step(self, cpu_gen: torch.Generator, steps: int = 0) -> None:
        """Draws shared by one optimiser step's micro-batches (CTM: the teacher's step count k); `steps`:
        optimiser steps taken so far (GCTM's curriculum doubles its grid by them)."""

    def pair(self, x: torch.Tensor, labels, gen, cpu_gen) -> tuple:
        """The training pair; pair[0] is the data side x0."""

    def ctm(self, online, target, teacher, pair: tuple, labels, gen, cpu_gen, dropout_seed) -> Any:
        """(per-sample CTM loss, the student's estimate x_est)."""

    def dsm(self, online, pair: tuple, labels, gen) -> torch.Tensor:
        """The per-sample denoising score-matching loss."""

    def estimate(self, online, target, pair: tuple, labels, gen, cpu_gen, dropout_seed) -> torch.Tensor:
        """The student's estimate alone: the fakes of a discriminator-only (GAN) step."""

    def meta(self) -> dict:
        """What checkpoints must record to rebuild the model."""
