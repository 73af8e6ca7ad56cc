"""Data-parallel training and sampling over torch.distributed (torchrun): NCCL on GPUs, gloo on CPUs.

Scheme (exact, see docs/distributed.md): every rank loads the same full micro-batch (same data-order
generator), draws the same full-batch noise, levels and indices with the same generators, and runs its
networks only on its own rows [lo, hi) through `RowShard`; the other rows pass through detached and are
dropped from the loss. Each rank back-propagates sum(own rows) / B and the gradients are summed over
ranks, so the optimiser step equals the single-process one with the same global batch. Without torchrun
(WORLD_SIZE unset or 1) nothing here changes the single-process path.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """The world size torchrun announced in the environment (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process does the logging, checkpoints, snapshots and evaluation."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (env://) and return this rank's device; no-op without
    torchrun. A torch without torch.distributed, or a group that cannot be joined, is a ValueError
    (`ctmtool.jobs.items.join_process_group` says it to a user)."""
    if env_world_size() <= 1 or is_distributed():
        return _local_device(device) if is_distributed() else device
    if not dist.is_available():
        raise ValueError("torchrun started several processes but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"could not join the torchrun process group ({backend}): {err}") from None
    return _local_device(device)


def _local_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK on GPUs (one GPU per rank), the CPU unchanged."""
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def teardown() -> None:
    """Barrier, then leave the process group (if one is running)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op single-process)."""
    if is_distributed():
        dist.barrier()


def rows(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """The [lo, hi) rows of an n-row batch that rank r of w computes (contiguous, sizes differ by at most
    1)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return r * n // w, (r + 1) * n // w


class RowShard:
    """A view of a network whose denoise/jump compute only rows [lo, hi) and pass the others through
    detached."""

    def __init__(self, net, lo: int, hi: int):
        self.net, self.lo, self.hi = net, lo, hi

    def __getattr__(self, name):
        return getattr(self.net, name)

    def denoise(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """net.denoise on this rank's rows."""
        return self._call(self.net.denoise, x, *args, **kwargs)

    def jump(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """net.jump on this rank's rows."""
        return self._call(self.net.jump, x, *args, **kwargs)

    def _call(self, fn: Callable, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        b, lo, hi = x.shape[0], self.lo, self.hi

        def cut(a):
            return a[lo:hi] if isinstance(a, torch.Tensor) and a.ndim > 0 and a.shape[0] == b else a

        y = fn(x[lo:hi], *map(cut, args), **{k: cut(v) for k, v in kwargs.items()})
        rest = x.detach().to(y.dtype)
        return torch.cat([rest[:lo], y, rest[hi:]])


class Shard:
    """This rank's part of each micro-batch: wraps networks and reduces per-sample losses (identity when
    world=1)."""

    def __init__(self):
        self.world = world_size()

    def active(self) -> bool:
        """Whether there is more than one rank."""
        return self.world > 1

    def wrap(self, net, n: int):
        """`net` restricted to this rank's rows of an n-row batch (unchanged single-process)."""
        return RowShard(net, *rows(n)) if self.active() and net is not None else net

    def mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        """This rank's share of the batch mean: sum(own rows) / n; summed over ranks it is the mean."""
        if not self.active():
            return per_sample.mean()
        lo, hi = rows(per_sample.shape[0])
        return per_sample[lo:hi].sum() / per_sample.shape[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (returned for chaining); no-op single-process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(params) -> None:
    """Sum the gradients of `params` over ranks in one flat buffer (ranks share the loss scaling by 1/B)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for g, v in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(v.view_as(g))


def _global_grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """||d(sum over ranks of loss)/d params||: local gradients summed over ranks before the norm."""
    grads = None
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).float().reshape(-1)
                      for g, p in zip(grads or [None] * len(params), params, strict=True)])
    return all_reduce_sum(flat).square().sum().sqrt()


def global_adaptive_weight(main: torch.Tensor, other: torch.Tensor, last: torch.Tensor, lo: float,
                           hi: float) -> torch.Tensor:
    """adaptive_weight of the global losses (sum of the rank parts): identical on every rank."""
    ratio = _global_grad_norm(main, [last]) / (_global_grad_norm(other, [last]) + 1e-4)
    return torch.nan_to_num(ratio, nan=lo).clamp(lo, hi).detach()


def max_over_ranks(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """The element-wise maximum over ranks (stop flags, elapsed minutes): every rank then decides alike."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_rows(mine: torch.Tensor, n: int) -> torch.Tensor | None:
    """Gather every rank's rows (sizes from `rows`) to rank 0 in rank order, via padded all_gather (NCCL and
    gloo); without torchrun, `mine` itself."""
    if not is_distributed():
        return mine
    w = world_size()
    sizes = [rows(n, r, w)[1] - rows(n, r, w)[0] for r in range(w)]
    buf = mine.new_zeros((max(sizes), *mine.shape[1:]))
    buf[: mine.shape[0]] = mine
    out = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(out, buf)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)]) if is_main() else None
