"""The trajectory objective: one class trains CTM students and GCTMs (Kim et al. 2024, Eq. 11; 2024b, Alg. 1).

    L = L_CTM + lambda_DSM L_DSM (+ lambda_GAN L_GAN)

What differs between CTM and GCTM is the loss object it is given, with one interface
(`ctmtool.core.interfaces.TrainingTerms`):
    pair(x, labels, gen, cpu_gen) -> tuple         the training pair; pair[0] is the data side x0
    ctm(online, target, teacher, pair, labels, gen, cpu_gen, dropout_seed) -> (per-sample loss, x_est)
    dsm(online, pair, labels, gen) -> per-sample loss
    meta() -> dict                                  what checkpoints must record to rebuild the model
    new_step(cpu_gen, steps)                        draws shared by one step's micro-batches (CTM: k; GCTM:
                                                    curriculum)
    estimate(online, target, pair, labels, gen, cpu_gen, dropout_seed) -> x_est   fakes of a GAN D-only step
`CTMTerms` (here: noise pairs, a teacher solving t -> u) and `ctmtool.train.gctm_objective.GCTMTerms` (pairs
from a coupling, the model's own EMA as the solver) are the two. The objective owns the networks, the adaptive
weights, the optional GAN term, the EMAs and the checkpoint groups.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from ctmtool.checkpoint import Checkpoint, load_state
from ctmtool.config import Preset
from ctmtool.core.distributed import all_reduce_grads, all_reduce_sum, global_adaptive_weight
from ctmtool.core.interfaces import TrainingTerms
from ctmtool.core.models import build_precond, student_from_teacher
from ctmtool.core.schedules import ctm_grid, sample_teacher_steps
from ctmtool.data.augment import diff_augment
from ctmtool.device import autocast
from ctmtool.losses.ctm import CTMLoss, DSMLoss, has_dropout
from ctmtool.losses.distances import make_distance
from ctmtool.losses.gan import Alternation, adaptive_weight
from ctmtool.train.distributed_gan import discriminator_loss, generator_gan_loss, global_batch_norm
from ctmtool.train.optim import Averager, make_optimizer, warmup_rate
from ctmtool.train.teacher_objective import ObjectiveBase, frozen_copy, last_layer, maybe_compile


def ema_group(rate: float) -> str:
    return f"ema_{rate:g}"


class CTMTerms:
    """CTM distillation's two terms (Kim et al. 2024, Eq. 9-10): x_t = x0 + t n, a teacher solves t -> u."""

    def __init__(self,
        ctm_loss: CTMLoss,              # the trajectory-consistency term, compared at sigma_min
        dsm_loss: DSMLoss,              # denoising score matching on g(x, t, t)
    ):
        self.ctm_loss, self.dsm_loss = ctm_loss, dsm_loss
        self.k: int | None = None  # this optimiser step's teacher steps (None: drawn per call)

    def new_step(self, cpu_gen, steps: int = 0) -> None:
        """Draw k once per optimiser step, shared by its micro-batches (and ranks: same generator), as the
        official code does (ctm-cifar10 cm/train_util.py 1024-1035: drawn in forward_backward, broadcast)."""
        self.k = sample_teacher_steps(self.ctm_loss.max_steps, cpu_gen)

    def pair(self, x, labels, gen, cpu_gen):
        return (x,)

    def ctm(self, online, target, teacher, pair, labels, gen, cpu_gen, dropout_seed):
        return self.ctm_loss(online, target, teacher, pair[0], labels, gen, cpu_gen, dropout_seed, k=self.k)

    def dsm(self, online, pair, labels, gen):
        return self.dsm_loss(online, pair[0], labels, gen)

    def estimate(self, online, target, pair, labels, gen, cpu_gen, dropout_seed):
        """The student's CTM estimate alone (no teacher solve): the fakes of a discriminator-only step."""
        return self.ctm_loss.estimate(online, target, pair[0], labels, gen, cpu_gen, dropout_seed, k=self.k)

    def meta(self) -> dict:
        return {}


class TrajectoryObjective(ObjectiveBase):
    """L_CTM + lambda_DSM L_DSM (+ lambda_GAN L_GAN) for any trajectory model; see the module docstring."""

    def __init__(self,
        preset: Preset,                 # the resolved preset (distill, ctm, gan sections)
        data_shape: tuple[int, ...],    # shape of one x0: (C, H, W) or (D,)
        device: torch.device,
        kind: str,                      # checkpoint kind: ctm | gctm
        net: nn.Module,                 # the freshly built (or teacher-initialised) trajectory model
        terms: TrainingTerms,           # CTMTerms | GCTMTerms (module docstring)
        teacher: nn.Module | None = None,  # denoiser solving t -> u; None: the model's own target EMA
        discriminator: nn.Module | None = None,  # GAN discriminator when preset.gan.enabled
    ):
        super().__init__(preset, preset.distill, data_shape, device)
        self.kind, self.terms = kind, terms
        self.net = net.to(device).train()
        # official: target keeps dropout
        self.target = frozen_copy(self.net).train(preset.ctm.dropout == "official")
        self.emas = {rate: frozen_copy(self.net) for rate in preset.ctm.eval_emas}
        self._averagers = {"target": Averager(self.target, self.net),
                           **{rate: Averager(ema, self.net) for rate, ema in self.emas.items()}}
        maybe_compile(self.net, self.cfg, device)
        self.teacher = teacher if teacher is not None else self.target
        self.last = last_layer(self.net)
        self.optimizers["net"] = make_optimizer(self.net.parameters(), self.cfg, device)
        self.disc = discriminator.to(device) if discriminator is not None else None
        if self.disc is not None:
            if self.shard.active():  # batch-norm statistics over the whole micro-batch, as in one process
                global_batch_norm(self.disc)
            self.optimizers["disc"] = make_optimizer(self.disc.parameters(), self._d_cfg(), device,
                                                     lr=preset.gan.lr)
        self.alternation = Alternation(preset.gan.g_period)

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

    def _weight(self, setting, main: torch.Tensor, other: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """lambda = ||grad_last main|| / ||grad_last other|| clamped to [lo, hi] (adaptive), or a constant."""
        if setting == "adaptive" and self.shard.active():
            return global_adaptive_weight(main, other, self.last, lo, hi)
        if setting == "adaptive":
            return adaptive_weight(main, other, self.last, lo, hi)
        return torch.as_tensor(float(setting), device=main.device)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """DiffAugment for image batches (both D inputs and the G term); vector data goes in unchanged."""

        return (diff_augment(x, self.preset.gan.augment, self.gen, self.preset.gan.cutout) if x.ndim == 4
                else x)

    def _gan_active(self, kimg: float) -> bool:
        return self.disc is not None and self.preset.gan.enabled and kimg >= self.preset.gan.start_kimg

    def step(self, batches, kimg: float) -> dict:
        c, g = self.preset.ctm, self.preset.gan
        gan = self._gan_active(kimg)
        turn = self.alternation.step_of(self.steps, self.d_steps)
        self.terms.new_step(self.cpu_gen, self.steps)
        if gan and not self.alternation.generator(turn):
            return self._d_only_step(batches, kimg)
        self.optimizers["net"].zero_grad(set_to_none=True)
        logs = {k: torch.zeros((), device=self.device) for k in ("loss", "ctm", "dsm", "w_dsm")}
        fakes, n = [], len(batches)
        for x, y in batches:
            pair = self.terms.pair(x, y, self.gen, self.cpu_gen)
            seed = self._dropout_seed()
            # under torchrun every rank draws the same batch and computes its own rows (Shard)
            net, target, teacher = (self.shard.wrap(m, len(x)) for m in (self.net, self.target, self.teacher))
            with autocast(self.device, self.cfg.precision):
                l_ctm, x_est = self.terms.ctm(net, target, teacher, pair, y, self.gen, self.cpu_gen, seed)
                l_ctm = self.shard.mean(l_ctm)
                l_dsm = self.shard.mean(self.terms.dsm(net, pair, y, self.gen))
                w_dsm = self._weight(c.dsm_weight, l_ctm, l_dsm, 0.0, 1e4)
                loss = l_ctm + w_dsm * l_dsm
                if gan:
                    l_gan = generator_gan_loss(self.disc, x_est, self._augment, self.shard)
                    loss = loss + self._weight(g.weight, l_ctm, l_gan, 0.01, 10.0) * l_gan
                    logs["gan"] = logs.get("gan", 0) + l_gan.detach() / n
                    fakes.append((pair[0], x_est.detach()))
            (loss / n).backward()
            for k, v in (("loss", loss), ("ctm", l_ctm), ("dsm", l_dsm), ("w_dsm", w_dsm)):
                logs[k] += v.detach() / n
        if not self._apply_step(logs, kimg):
            return {"finite": False}
        if gan and self.alternation.discriminator(turn):
            self._discriminator_step(fakes, logs, kimg)
        return logs

    def _apply_step(self, logs: dict, kimg: float) -> bool:
        """Global means of the logs and summed gradients over ranks, the non-finite check, the optimiser step
        and the EMAs; False (and no update) when the loss is not finite."""
        for k in ("loss", "ctm", "dsm", "gan"):  # rank parts -> global means (w_dsm is already global)
            if k in logs:
                all_reduce_sum(logs[k])
        all_reduce_grads(self.net.parameters())
        if not bool(torch.isfinite(logs["loss"])):
            self.optimizers["net"].zero_grad(set_to_none=True)
            return False
        self._step_optimizer("net", self.net.parameters(), kimg)
        # the solver's target EMA has no warm-up: a target that follows the online net closely from the start
        # feeds the net its own errors (GCTM diverged within tens of steps on toy-translate)
        self._averagers["target"](self.preset.ctm.target_ema)
        warm = self.preset.ctm.eval_ema_warmup  # official: fixed rates from the first step
        for rate in self.emas:
            self._averagers[rate](warmup_rate(rate, self.steps) if warm else rate)
        return True

    def _d_cfg(self):
        """The distill optimiser settings with the discriminator's betas (the paper: RAdam, betas 0.5,
        0.9)."""
        return self.cfg.model_copy(update={"betas": self.preset.gan.betas})

    def _d_only_step(self, batches, kimg: float) -> dict:
        """A discriminator turn of the alternation: fakes are the student's CTM estimates (no G update, no
        EMA)."""
        fakes = []
        with torch.no_grad():
            for x, y in batches:
                pair = self.terms.pair(x, y, self.gen, self.cpu_gen)
                net, target = (self.shard.wrap(m, len(x)) for m in (self.net, self.target))  # own rows only
                with autocast(self.device, self.cfg.precision):
                    x_est = self.terms.estimate(net, target, pair, y, self.gen, self.cpu_gen,
                                                self._dropout_seed())
                fakes.append((pair[0], x_est.float()))
        logs: dict = {}
        self._discriminator_step(fakes, logs, kimg)
        return logs

    def _discriminator_step(self, fakes: list, logs: dict, kimg: float) -> None:
        """Hinge loss on augmented reals and the generator's detached fakes (Kim et al. 2024, Eq. 12); reals
        and fakes get independent augmentation draws. Under torchrun each rank scores its own rows and the
        gradients are summed over ranks (`distributed_gan`)."""
        d_opt, n = self.optimizers["disc"], len(fakes)
        d_opt.zero_grad(set_to_none=True)
        for real, fake in fakes:
            with autocast(self.device, self.cfg.precision):
                l_d = discriminator_loss(self.disc, real, fake, self._augment, self.shard)
            (l_d / n).backward()
            logs["disc"] = logs.get("disc", 0) + l_d.detach() / n
        all_reduce_sum(logs["disc"])
        all_reduce_grads(self.disc.parameters())
        self._step_optimizer("disc", self.disc.parameters(), kimg, lr=self.preset.gan.lr)

    def checkpoint(self, meta: dict) -> Checkpoint:
        """net, target, `ema` (the first evaluation rate), `ema_<rate>` for the others, disc, optimisers,
        RNG."""
        groups, extra = self._groups()
        c = self.preset.ctm
        groups.update(net=self.net.state_dict(), target=self.target.state_dict())
        for i, (rate, ema) in enumerate(self.emas.items()):
            groups["ema" if i == 0 else ema_group(rate)] = ema.state_dict()
        if not self.emas:
            groups["ema"] = self.target.state_dict()
        if self.disc is not None:
            groups["disc"] = self.disc.state_dict()
        info = {"target_ema": c.target_ema,
                "eval_emas": {("ema" if i == 0 else ema_group(r)): r for i, r in enumerate(c.eval_emas)},
                "d_steps": self.d_steps, **self.terms.meta()}
        return Checkpoint(self.kind, self.preset, self.data_shape, groups, {**meta, **extra, **info})

    def restore(self, ckpt: Checkpoint) -> None:
        load_state(self.net, ckpt.state("net"), f"{ckpt.path} [net]")
        load_state(self.target, ckpt.state("target"), f"{ckpt.path} [target]")
        for i, (rate, ema) in enumerate(self.emas.items()):
            load_state(ema, ckpt.state("ema" if i == 0 else ema_group(rate)), f"{ckpt.path} [ema {rate}]")
        if self.disc is not None and "disc" in ckpt.groups:
            load_state(self.disc, ckpt.state("disc"), f"{ckpt.path} [disc]")
        elif self.disc is not None:
            self.optimizers.pop("disc")  # phase 2 starting from a CTM+DSM checkpoint: fresh discriminator
            self._restore_common(ckpt)
            self.optimizers["disc"] = make_optimizer(self.disc.parameters(), self._d_cfg(), self.device,
                                                     lr=self.preset.gan.lr)
            return
        self._restore_common(ckpt)
        self.d_steps = int(ckpt.meta.get("d_steps", 0))


def ctm_objective(
    preset: Preset,                     # the resolved preset (distill, ctm, gan sections)
    data_shape: tuple[int, ...],        # (C, H, W) or (D,)
    device: torch.device,
    teacher: nn.Module | None,          # a denoiser solving t -> u; None when ctm.teacher = "self"
    init_state: dict | None = None,     # teacher weights to initialise the student by name
    distance: nn.Module | None = None,  # d(x, y) -> (B,); built from preset.ctm when None
    discriminator: nn.Module | None = None,  # GAN discriminator when preset.gan.enabled
) -> TrajectoryObjective:
    """CTM distillation (Kim et al. 2024, Eq. 11): the student initialised from the teacher's weights."""

    c, d = preset.ctm, preset.diffusion
    if teacher is None and c.teacher != "self":
        raise ValueError("a teacher denoiser is needed unless ctm.teacher = 'self'")
    torch.manual_seed(preset.distill.seed)
    net = student_from_teacher(init_state, preset, data_shape) if init_state is not None else \
        build_precond("ctm", preset, data_shape)
    dim = 1
    for s in data_shape:
        dim *= s
    grid = ctm_grid(preset)
    self_jump = c.teacher == "self" and c.self_solver == "jump"
    terms = CTMTerms(CTMLoss(grid, c.max_steps, (distance or make_distance(c, dim)).to(device), c.solver,
                             self_jump, c.s_sampler),
                     DSMLoss(grid, d.p_mean, d.p_std, d.sigma_data, c.dsm_high_noise_fraction, c.dsm_sampler,
                             d.rho))
    return TrajectoryObjective(preset, data_shape, device, "ctm", net, terms, teacher, discriminator)
