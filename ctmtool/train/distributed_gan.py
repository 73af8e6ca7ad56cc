"""The GAN term of CTM (Kim et al. 2024, Eq. 12) under torchrun: each rank runs the discriminator on its own
rows.

The scheme of `distributed.py` carried over to the discriminator: every rank holds the full micro-batch and
the same random draws, runs D only on its rows [lo, hi) and back-propagates its share sum(own rows) / B;
summed over ranks (gradients, logs) that is the single-process step with the same global batch. Three things
make it exact:

* DiffAugment: every rank augments all B rows with the shared noise generator and keeps its own rows. Each row
  then gets the draw it gets in one process, and the generator advances alike on every rank, so the noise of
  the next draws stays shared. (Augmenting only the own rows would need per-rank streams, giving other draws
  than one process and ranks out of step.) The augmentation is per-sample element-wise work, negligible next
  to the discriminator.
* The hinge losses as per-row shares: mean over heads of (sum over the rank's rows) / (B x logits per row).
* Batch normalisation (the Projected-GAN heads): statistics of the global micro-batch (`GlobalBatchNorm`,
  sums all-reduced with their gradients), as in one process. The official code (DDP, plain BatchNorm2d,
  broadcast_buffers=False) normalises with each GPU's own rows instead, so its result depends on the GPU
  count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ctmtool.core.distributed import Shard, is_distributed, rows
from ctmtool.losses.gan import Logits, _heads, d_hinge_loss, g_hinge_loss


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; its backward sums the incoming gradients over ranks (every rank's loss uses
    y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(t)


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are over the rows of every rank (SyncBatchNorm also for gloo/CPU);
    one process, or eval mode: plain batch norm. Same parameters, buffers and state-dict names."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # half precision: statistics in float32
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        n = torch.tensor(float(xf.numel() // xf.shape[1]), dtype=torch.float64, device=x.device)
        dist.all_reduce(n)  # values per channel over all ranks (kept on the device: no host sync)
        count = n.to(xf.dtype)
        # two passes, as close to one process as round-off allows
        mean = _sum_over_ranks(xf.sum(dims)) / count
        d = xf - mean.view(shape)
        var = _sum_over_ranks(d.square().sum(dims)) / count
        y = d * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (count / (count - 1).clamp(min=1)), alpha=f)
        return y.to(x.dtype)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """Turn every registered batch-norm layer of `module` into a `GlobalBatchNorm` in place, keeping its
    parameter and buffer tensors (so optimisers and state dicts see the same names); returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            for key in ("weight", "bias"):
                setattr(new, key, getattr(child, key))
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, key, getattr(child, key))
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batch_norm(child)
    return module


def g_hinge_share(fake_logits: Logits, n: int) -> torch.Tensor:
    """This rank's share of `g_hinge_loss` over an n-row batch, from its own rows' logits (sum over ranks: the
    loss)."""
    return -torch.stack([f.sum() / (n * f[0].numel()) for f in _heads(fake_logits)]).mean()


def d_hinge_share(real_logits: Logits, fake_logits: Logits, n: int) -> torch.Tensor:
    """This rank's share of `d_hinge_loss` over n-row real and fake batches, from its own rows' logits."""
    real, fake = _heads(real_logits), _heads(fake_logits)
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real heads but {len(fake)} fake heads")
    return torch.stack([torch.relu(1 - r).sum() / (n * r[0].numel())
                        + torch.relu(1 + f).sum() / (n * f[0].numel())
                        for r, f in zip(real, fake, strict=True)]).mean()


def generator_gan_loss(disc: nn.Module, fake: torch.Tensor, augment: Callable, shard: Shard) -> torch.Tensor:
    """L_GAN of the generator, -E[D(aug(fake))] (Eq. 12); under torchrun this rank's share, D on its own
    rows."""
    if not shard.active():
        return g_hinge_loss(disc(augment(fake)))
    lo, hi = rows(fake.shape[0])
    return g_hinge_share(disc(augment(fake)[lo:hi]), fake.shape[0])


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, augment: Callable,
                       shard: Shard) -> torch.Tensor:
    """Hinge loss of D on independently augmented reals and fakes; under torchrun this rank's share (own
    rows)."""
    if not shard.active():
        return d_hinge_loss(disc(augment(real)), disc(augment(fake)))
    n = real.shape[0]
    if fake.shape[0] != n:
        raise ValueError(f"{n} reals but {fake.shape[0]} fakes")
    lo, hi = rows(n)
    r = disc(augment(real)[lo:hi])  # augment reals, D, then fakes: the single-process order of the draws
    f = disc(augment(fake)[lo:hi])
    return d_hinge_share(r, f, n)
