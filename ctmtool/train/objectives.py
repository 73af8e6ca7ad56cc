"""Training objectives plugged into `loop.fit`: the EDM teacher and the CTM student (with optional GAN).

Each objective owns its networks, optimisers, EMAs and random generators, and knows how to write all of
them into a checkpoint and read them back (exact resume).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from functools import cached_property

import torch
from torch import nn

from ctmtool.checkpoint import Checkpoint, load_state
from ctmtool.config import Preset, TrainConfig
from ctmtool.errors import UserError
from ctmtool.losses.ctm import CTMLoss, DSMLoss, has_dropout
from ctmtool.losses.edm import EDMLoss
from ctmtool.losses.gan import Alternation
from ctmtool.models import S_LAYER_PREFIXES, build_precond, student_from_teacher
from ctmtool.schedules import karras_sigmas
from ctmtool.train.distributed import Shard, all_reduce_grads, all_reduce_sum, global_adaptive_weight
from ctmtool.train.optim import (
    ema_update,
    make_optimizer,
    optimizer_from_tensors,
    optimizer_to_tensors,
    set_lr,
    warmup_rate,
)


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast on CUDA when asked; the CPU always runs fp32."""
    if device.type == "cuda" and cfg.precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def last_layer(model: nn.Module) -> torch.Tensor:
    """The network's output layer weight (for the adaptive loss weights), ignoring the student-only s-layers."""
    params = [(n, p) for n, p in model.named_parameters()
              if p.ndim >= 2 and not any(s in n for s in S_LAYER_PREFIXES)]
    return params[-1][1]


def frozen_copy(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).eval().requires_grad_(False)


def maybe_compile(model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Compile the raw network in place (state-dict names unchanged) on CUDA when cfg.compile."""
    if cfg.compile and device.type == "cuda":
        model.net.compile()


class _Base:
    kind = ""

    def __init__(self, preset: Preset, cfg: TrainConfig, data_shape: tuple[int, ...], device: torch.device):
        self.preset, self.cfg, self.data_shape, self.device = preset, cfg, tuple(data_shape), device
        self.gen = torch.Generator(device).manual_seed(cfg.seed + 1)  # noise draws
        self.cpu_gen = torch.Generator().manual_seed(cfg.seed + 2)  # index draws, dropout seeds
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.steps = 0  # optimiser steps taken (drives the EMA warm-up)
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
            self.d_steps = getattr(self, "d_steps", 0) + 1

    def _groups(self) -> tuple[dict, dict]:
        groups, meta = {}, {}
        for name, opt in self.optimizers.items():
            tensors, info = optimizer_to_tensors(opt)
            groups[f"optim_{name}"] = tensors
            meta[f"optim_{name}"] = info
        groups["rng"] = {"noise": self.gen.get_state(), "index": self.cpu_gen.get_state(), "torch": torch.get_rng_state()}
        return groups, meta

    def _restore_common(self, ckpt: Checkpoint) -> None:
        for name, opt in self.optimizers.items():
            optimizer_from_tensors(opt, ckpt.state(f"optim_{name}"), ckpt.meta[f"optim_{name}"])
        self.steps = int(ckpt.meta.get("step", 0))
        rng = ckpt.state("rng")
        self.gen.set_state(rng["noise"])
        self.cpu_gen.set_state(rng["index"])
        torch.set_rng_state(rng["torch"])


class TeacherObjective(_Base):
    """EDM training of a denoiser (Karras et al. 2022, Sec. 5): EDM loss, Adam, EMA."""

    kind = "teacher"

    def __init__(self, preset: Preset, data_shape: tuple[int, ...], device: torch.device):
        super().__init__(preset, preset.teacher, data_shape, device)
        torch.manual_seed(self.cfg.seed)
        self.net = build_precond("teacher", preset, data_shape).to(device).train()
        self.ema = frozen_copy(self.net)
        maybe_compile(self.net, self.cfg, device)
        d = preset.diffusion
        self.loss = EDMLoss(d.p_mean, d.p_std, d.sigma_data)
        self.optimizers["net"] = make_optimizer(self.net.parameters(), self.cfg, device)

    def step(self, batches, kimg: float) -> dict:
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for x, y in batches:
            with autocast(self.device, self.cfg):
                loss = self.shard.mean(self.loss(self.shard.wrap(self.net, len(x)), x, y, self.gen))
            (loss / len(batches)).backward()
            total += loss.detach() / len(batches)
        all_reduce_sum(total)
        all_reduce_grads(self.net.parameters())
        if not bool(torch.isfinite(total)):
            opt.zero_grad(set_to_none=True)
            return {"finite": False}
        self._step_optimizer("net", self.net.parameters(), kimg)
        ema_update(self.ema, self.net, warmup_rate(self.cfg.ema, self.steps))
        return {"loss": total}

    def sampling_model(self) -> nn.Module:
        return self.ema

    def checkpoint(self, meta: dict) -> Checkpoint:
        groups, extra = self._groups()
        groups.update(net=self.net.state_dict(), ema=self.ema.state_dict())
        return Checkpoint("teacher", self.preset, self.data_shape, groups, {**meta, **extra, "ema_rate": self.cfg.ema})

    def restore(self, ckpt: Checkpoint) -> None:
        load_state(self.net, ckpt.state("net"), f"{ckpt.path} [net]")
        load_state(self.ema, ckpt.state("ema"), f"{ckpt.path} [ema]")
        self._restore_common(ckpt)


def ema_group(rate: float) -> str:
    return f"ema_{rate:g}"


class _TrajectoryBase(_Base):
    """Shared by CTM and GCTM: the online net, the solver's target EMA and the evaluation EMAs in checkpoints."""

    net: nn.Module
    target: nn.Module
    emas: dict

    def sampling_model(self) -> nn.Module:
        return self.emas[self.preset.ctm.eval_emas[0]] if self.emas else self.target

    @cached_property
    def _has_dropout(self) -> bool:
        return has_dropout(self.net)

    def _dropout_seed(self) -> int | None:
        """The seed shared by estimate and target passes for matched dropout masks; None when the net has no
        dropout (forking the RNG then only costs time). Drawn either way, so the index stream is the same."""
        seed = int(torch.randint(2**31 - 1, (), generator=self.cpu_gen))
        return seed if self._has_dropout and self.preset.ctm.dropout == "matched" else None

    def _trajectory_groups(self) -> tuple[dict, dict]:
        """(tensor groups, meta): net, target, `ema` (the first evaluation rate) and `ema_<rate>` for the others."""
        c = self.preset.ctm
        groups = {"net": self.net.state_dict(), "target": self.target.state_dict()}
        for i, (rate, ema) in enumerate(self.emas.items()):
            groups["ema" if i == 0 else ema_group(rate)] = ema.state_dict()
        if not self.emas:
            groups["ema"] = self.target.state_dict()
        info = {"target_ema": c.target_ema,
                "eval_emas": {("ema" if i == 0 else ema_group(r)): r for i, r in enumerate(c.eval_emas)}}
        return groups, info

    def _apply_step(self, logs: dict, kimg: float) -> bool:
        """Global means of the logs and summed gradients over ranks, the non-finite check, the optimiser step
        and the EMAs; False (and no update) when the loss is not finite."""
        for k in ("loss", "ctm", "dsm"):  # rank parts -> global means (w_dsm is already global)
            all_reduce_sum(logs[k])
        all_reduce_grads(self.net.parameters())
        if not bool(torch.isfinite(logs["loss"])):
            self.optimizers["net"].zero_grad(set_to_none=True)
            return False
        self._step_optimizer("net", self.net.parameters(), kimg)
        # the solver's target EMA has no warm-up: a target that follows the online net closely from the start
        # feeds the net its own errors (GCTM diverged within tens of steps on toy-translate)
        ema_update(self.target, self.net, self.preset.ctm.target_ema)
        for rate, ema in self.emas.items():
            ema_update(ema, self.net, warmup_rate(rate, self.steps))
        return True

    def _restore_trajectory(self, ckpt: Checkpoint) -> None:
        load_state(self.net, ckpt.state("net"), f"{ckpt.path} [net]")
        load_state(self.target, ckpt.state("target"), f"{ckpt.path} [target]")
        for i, (rate, ema) in enumerate(self.emas.items()):
            load_state(ema, ckpt.state("ema" if i == 0 else ema_group(rate)), f"{ckpt.path} [ema {rate}]")


class CTMObjective(_TrajectoryBase):
    """CTM distillation (Kim et al. 2024, Eq. 11): L_CTM + lambda_DSM L_DSM (+ lambda_GAN L_GAN)."""

    kind = "ctm"

    def __init__(self,
        preset: Preset,                 # the resolved preset (distill, ctm, gan sections)
        data_shape: tuple[int, ...],    # (C, H, W) or (D,)
        device: torch.device,
        teacher: nn.Module | None,      # a denoiser solving t -> u; None when ctm.teacher = "self"
        init_state: dict | None = None, # teacher weights to initialise the student by name
        distance: nn.Module | None = None,  # d(x, y) -> (B,); built from preset.ctm when None
        discriminator: nn.Module | None = None,  # GAN discriminator when preset.gan.enabled
    ):
        super().__init__(preset, preset.distill, data_shape, device)
        from ctmtool.losses.distances import make_distance

        c, d = preset.ctm, preset.diffusion
        torch.manual_seed(self.cfg.seed)
        net = student_from_teacher(init_state, preset, data_shape) if init_state is not None else \
            build_precond("ctm", preset, data_shape)
        self.net = net.to(device).train()
        self.target = frozen_copy(self.net).train(c.dropout == "official")  # official: the target keeps its dropout
        self.emas = {rate: frozen_copy(self.net) for rate in c.eval_emas}
        maybe_compile(self.net, self.cfg, device)
        self.teacher = self.target if c.teacher == "self" else teacher
        if self.teacher is None:
            raise ValueError("a teacher denoiser is needed unless ctm.teacher = 'self'")
        dim = 1
        for s in data_shape:
            dim *= s
        self.distance = (distance or make_distance(c, dim)).to(device)
        grid = karras_sigmas(c.grid, d.sigma_min, d.sigma_max, d.rho)
        self.ctm_loss = CTMLoss(grid, c.max_steps, self.distance, c.solver)
        self.dsm_loss = DSMLoss(grid, d.p_mean, d.p_std, d.sigma_data, c.dsm_high_noise_fraction, c.dsm_sampler, d.rho)
        self.last = last_layer(self.net)
        self.optimizers["net"] = make_optimizer(self.net.parameters(), self.cfg, device)
        self.disc = discriminator.to(device) if discriminator is not None else None
        if self.disc is not None:
            if self.shard.active():
                raise UserError("the GAN phase (gan.enabled) is not supported with torchrun yet; run it in one process")
            self.optimizers["disc"] = make_optimizer(self.disc.parameters(), self._d_cfg(), device, lr=preset.gan.lr)
        self.alternation = Alternation(preset.gan.g_period)
        self.d_steps = 0

    def _weight(self, setting, main: torch.Tensor, other: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        from ctmtool.losses.gan import adaptive_weight

        if setting == "adaptive" and self.shard.active():
            return global_adaptive_weight(main, other, self.last, lo, hi)
        if setting == "adaptive":
            return adaptive_weight(main, other, self.last, lo, hi)
        return torch.as_tensor(float(setting), device=main.device)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """DiffAugment for image batches (both D inputs and the G term); vector data goes in unchanged."""
        from ctmtool.augment import diff_augment

        return diff_augment(x, self.preset.gan.augment, self.gen, self.preset.gan.cutout) if x.ndim == 4 else x

    def _d_cfg(self):
        """The distill optimiser settings with the discriminator's betas (the paper: RAdam, betas 0.5, 0.9)."""
        return self.cfg.model_copy(update={"betas": self.preset.gan.betas})

    def _d_step(self, fakes: list, kimg: float, logs: dict) -> None:
        """One discriminator update on (real, fake) pairs, each augmented with its own draws."""
        from ctmtool.losses.gan import d_hinge_loss

        self.optimizers["disc"].zero_grad(set_to_none=True)
        for real, fake in fakes:
            with autocast(self.device, self.cfg):
                l_d = d_hinge_loss(self.disc(self._augment(real)), self.disc(self._augment(fake)))
            (l_d / len(fakes)).backward()
            logs["disc"] = logs.get("disc", 0) + l_d.detach() / len(fakes)
        self._step_optimizer("disc", self.disc.parameters(), kimg, lr=self.preset.gan.lr)

    def _d_only_step(self, batches, kimg: float) -> dict:
        """A discriminator step of the alternation: fakes are the student's CTM estimates (no G update, no EMA)."""
        fakes = []
        with torch.no_grad():
            for x, y in batches:
                with autocast(self.device, self.cfg):
                    x_est = self.ctm_loss.estimate(self.net, self.target, x, y, self.gen, self.cpu_gen, self._dropout_seed())
                fakes.append((x, x_est.float()))
        logs: dict = {}
        self._d_step(fakes, kimg, logs)
        return logs

    def _gan_active(self, kimg: float) -> bool:
        return self.disc is not None and self.preset.gan.enabled and kimg >= self.preset.gan.start_kimg

    def step(self, batches, kimg: float) -> dict:
        from ctmtool.losses.gan import g_hinge_loss

        c, g = self.preset.ctm, self.preset.gan
        gan = self._gan_active(kimg)
        turn = self.alternation.step_of(self.steps, self.d_steps)
        if gan and not self.alternation.generator(turn):
            return self._d_only_step(batches, kimg)
        opt = self.optimizers["net"]
        opt.zero_grad(set_to_none=True)
        logs = {k: torch.zeros((), device=self.device) for k in ("loss", "ctm", "dsm", "w_dsm")}
        fakes = []
        n = len(batches)
        for x, y in batches:
            seed = self._dropout_seed()
            net, target, teacher = (self.shard.wrap(m, len(x)) for m in (self.net, self.target, self.teacher))
            with autocast(self.device, self.cfg):
                l_ctm, x_est = self.ctm_loss(net, target, teacher, x, y, self.gen, self.cpu_gen, seed)
                l_ctm = self.shard.mean(l_ctm)
                l_dsm = self.shard.mean(self.dsm_loss(net, x, y, self.gen))
                w_dsm = self._weight(c.dsm_weight, l_ctm, l_dsm, 0.0, 1e4)
                loss = l_ctm + w_dsm * l_dsm
                if gan:
                    l_gan = g_hinge_loss(self.disc(self._augment(x_est)))
                    w_gan = self._weight(g.weight, l_ctm, l_gan, 0.01, 10.0)
                    loss = loss + w_gan * l_gan
                    logs["gan"] = logs.get("gan", 0) + l_gan.detach() / n
                    fakes.append((x, x_est.detach()))
            (loss / n).backward()
            for k, v in (("loss", loss), ("ctm", l_ctm), ("dsm", l_dsm), ("w_dsm", w_dsm)):
                logs[k] += v.detach() / n
        if not self._apply_step(logs, kimg):
            return {"finite": False}
        if gan and self.alternation.discriminator(turn):
            self._d_step(fakes, kimg, logs)
        return logs

    def checkpoint(self, meta: dict) -> Checkpoint:
        groups, extra = self._groups()
        traj, info = self._trajectory_groups()
        groups.update(traj)
        if self.disc is not None:
            groups["disc"] = self.disc.state_dict()
        return Checkpoint(self.kind, self.preset, self.data_shape, groups, {**meta, **extra, **info, "d_steps": self.d_steps})

    def restore(self, ckpt: Checkpoint) -> None:
        self._restore_trajectory(ckpt)
        if self.disc is not None and "disc" in ckpt.groups:
            load_state(self.disc, ckpt.state("disc"), f"{ckpt.path} [disc]")
            self.d_steps = int(ckpt.meta.get("d_steps", 0))
        elif self.disc is not None:
            self.optimizers.pop("disc")  # phase 2 starting from a CTM+DSM checkpoint: fresh discriminator
            self._restore_common(ckpt)
            self.optimizers["disc"] = make_optimizer(self.disc.parameters(), self._d_cfg(), self.device, lr=self.preset.gan.lr)
            return
        self._restore_common(ckpt)

