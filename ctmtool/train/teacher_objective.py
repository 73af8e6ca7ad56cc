"""Training objectives plugged into `loop.fit`: what every objective shares, and the EDM teacher.

Each objective owns its networks, optimisers, EMAs and random generators, and knows how to write all of
them into a checkpoint and read them back (exact resume). The trajectory objective (CTM and GCTM) is in
`ctmtool.train.trajectory`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ctmtool.checkpoint import Checkpoint, load_state
from ctmtool.config import Preset, TrainConfig
from ctmtool.core.distributed import Shard, all_reduce_grads, all_reduce_sum
from ctmtool.core.models import S_LAYER_PREFIXES, build_precond
from ctmtool.device import autocast
from ctmtool.losses.edm import EDMLoss
from ctmtool.train.optim import (
    Averager,
    make_optimizer,
    optimizer_from_tensors,
    optimizer_to_tensors,
    set_lr,
    warmup_rate,
)


def last_layer(net: nn.Module) -> torch.Tensor:
    """A preconditioned net's output layer weight (for the adaptive loss weights), ignoring the student-only
    s-layers."""
    if hasattr(getattr(net, "net", None), "adaptive_weight_layer"):  # the ADM names its own (Sony's choice)
        return net.net.adaptive_weight_layer()
    params = [(n, p) for n, p in net.named_parameters()
              if p.ndim >= 2 and not any(s in n for s in S_LAYER_PREFIXES)]
    return params[-1][1]


def frozen_copy(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).eval().requires_grad_(False)


def maybe_compile(net: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Compile a preconditioned net's raw network F (`net.net`) in place (state-dict names unchanged) on CUDA
    when cfg.compile."""
    if cfg.compile and device.type == "cuda":
        net.net.compile()


class ObjectiveBase:
    """Generators, optimisers, step count and the checkpoint groups every objective has."""

    kind = ""

    def __init__(self, preset: Preset, cfg: TrainConfig, data_shape: tuple[int, ...], device: torch.device):
        self.preset, self.cfg, self.data_shape, self.device = preset, cfg, tuple(data_shape), device
        self.gen = torch.Generator(device).manual_seed(cfg.seed + 1)  # noise draws
        self.cpu_gen = torch.Generator().manual_seed(cfg.seed + 2)  # index draws, dropout seeds
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.steps = 0  # optimiser steps taken (drives the EMA warm-up)
        self.d_steps = 0  # discriminator steps taken (the G/D alternation of the GAN phase)
        self.progress = 0.0  # done fraction of the run, set by the loop (drives lr decay)
        self.shard = Shard()  # this rank's rows of each micro-batch (everything when single-process)

    def _step_optimizer(self, name: str, params, kimg: float, lr: float | None = None) -> None:
        opt = self.optimizers[name]
        set_lr(opt, lr or self.cfg.lr, kimg, self.cfg.lr_rampup_kimg, self.cfg.lr_decay, self.progress)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        if name == "net":
            self.steps += 1
        elif name == "disc":
            self.d_steps += 1

    def _groups(self) -> tuple[dict, dict]:
        groups, meta = {}, {}
        for name, opt in self.optimizers.items():
            tensors, info = optimizer_to_tensors(opt)
            groups[f"optim_{name}"] = tensors
            meta[f"optim_{name}"] = info
        groups["rng"] = self.rng_state()
        return groups, meta

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Every random stream a step draws from (the loop restores it when it abandons a step part-way)."""
        return {"noise": self.gen.get_state(), "index": self.cpu_gen.get_state(),
                "torch": torch.get_rng_state()}

    def set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(rng["noise"])
        self.cpu_gen.set_state(rng["index"])
        torch.set_rng_state(rng["torch"])

    def _restore_common(self, ckpt: Checkpoint) -> None:
        for name, opt in self.optimizers.items():
            optimizer_from_tensors(opt, ckpt.state(f"optim_{name}"), ckpt.meta[f"optim_{name}"])
        self.steps = int(ckpt.meta.get("step", 0))
        self.set_rng_state(ckpt.state("rng"))


class TeacherObjective(ObjectiveBase):
    """EDM training of a denoiser (Karras et al. 2022, Sec. 5): EDM loss, Adam, EMA."""

    kind = "teacher"

    def __init__(self, preset: Preset, data_shape: tuple[int, ...], device: torch.device):
        super().__init__(preset, preset.teacher, data_shape, device)
        torch.manual_seed(self.cfg.seed)
        self.net = build_precond("teacher", preset, data_shape).to(device).train()
        self.ema = frozen_copy(self.net)
        self._averager = Averager(self.ema, self.net)
        maybe_compile(self.net, self.cfg, device)
        d = preset.diffusion
        self.loss = EDMLoss(d.p_mean, d.p_std, d.sigma_data)
        self.optimizers["net"] = make_optimizer(self.net.parameters(), self.cfg, device)

    def step(self, batches, kimg: float) -> dict:
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for x, y in batches:
            with autocast(self.device, self.cfg.precision):
                loss = self.shard.mean(self.loss(self.shard.wrap(self.net, len(x)), x, y, self.gen))
            (loss / len(batches)).backward()
            total += loss.detach() / len(batches)
        all_reduce_sum(total)
        all_reduce_grads(self.net.parameters())
        if not bool(torch.isfinite(total)):
            opt.zero_grad(set_to_none=True)
            return {"finite": False}
        self._step_optimizer("net", self.net.parameters(), kimg)
        self._averager(warmup_rate(self.cfg.ema, self.steps))
        return {"loss": total}

    def sampling_model(self) -> nn.Module:
        return self.ema

    def checkpoint(self, meta: dict) -> Checkpoint:
        groups, extra = self._groups()
        groups.update(net=self.net.state_dict(), ema=self.ema.state_dict())
        return Checkpoint("teacher", self.preset, self.data_shape, groups,
                          {**meta, **extra, "ema_rate": self.cfg.ema})

    def restore(self, ckpt: Checkpoint) -> None:
        load_state(self.net, ckpt.state("net"), f"{ckpt.path} [net]")
        load_state(self.ema, ckpt.state("ema"), f"{ckpt.path} [ema]")
        self._restore_common(ckpt)


