"""Probability-flow ODE solvers on a given noise schedule; every solver has the same signature.

`solver(net, x, sigmas, labels=None) -> x` integrates dx/dsigma = (x - D(x, sigma)) / sigma from
sigmas[0] to sigmas[-1], where D = net.denoise (a preconditioned network). `sigmas` is either one schedule
(steps + 1,) shared by the batch, or one per sample (steps + 1, B) (CTM targets start every sample at its own
t). A final level of 0 is reached with an Euler step, as in EDM. The same ODE form holds for GCTM's
interpolation time (dx/dt = (x - E[x0|x_t]) / t), so these solvers serve both.
"""

from __future__ import annotations

import torch


def _level(sigmas: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    """Level i for every sample, as a (B,) float32 tensor."""
    s = sigmas[i]
    # non_blocking: a CPU schedule's copy to the GPU does not synchronise the stream (safe from pageable
    # memory)
    return (s.expand(x.shape[0]) if s.ndim == 0 else s).to(device=x.device, dtype=torch.float32,
                                                           non_blocking=True)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def euler(net, x: torch.Tensor, sigmas: torch.Tensor, labels=None) -> torch.Tensor:
    """Euler steps of the PF-ODE (Karras et al. 2022, Eq. 4 with D in place of the score)."""
    sigmas = torch.as_tensor(sigmas)
    x = x.float()
    for i in range(sigmas.shape[0] - 1):
        t, nxt = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        d = (x - net.denoise(x, t, labels)) / _col(t, x)
        x = x + _col(nxt - t, x) * d
    return x


@torch.no_grad()
def heun(net, x: torch.Tensor, sigmas: torch.Tensor, labels=None) -> torch.Tensor:
    """Heun's 2nd-order PF-ODE steps (Karras et al. 2022, Alg. 1 with S_churn = 0); Euler into sigma = 0."""
    sigmas = torch.as_tensor(sigmas)
    x = x.float()
    for i in range(sigmas.shape[0] - 1):
        t, nxt = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        # checked on the schedule's own (CPU) tensor: no GPU sync, and the step itself has no data-dependent
        # branch
        x = heun_step(net, x, t, nxt, labels, second=bool((sigmas[i + 1] > 0).any()))
    return x


def heun_step(net, x: torch.Tensor, t: torch.Tensor, nxt: torch.Tensor, labels=None,
              second: bool = True) -> torch.Tensor:
    """One Heun step from levels t to nxt (B,); the correction is applied where nxt > 0 (only if `second`)."""
    d = (x - net.denoise(x, t, labels)) / _col(t, x)
    x_next = x + _col(nxt - t, x) * d
    if second:
        last = nxt > 0
        safe = torch.where(last, nxt, torch.ones_like(nxt))
        d2 = (x_next - net.denoise(x_next, safe, labels)) / _col(safe, x)
        x_next = torch.where(_col(last, x), x + _col(nxt - t, x) * 0.5 * (d + d2), x_next)
    return x_next


SOLVERS = {"euler": euler, "heun": heun}


def solver_nfe(name: str, steps: int, ends_at_zero: bool = True) -> int:
    """Network evaluations of `steps` solver steps (Heun's last step into sigma = 0 costs one)."""
    return steps if name == "euler" else 2 * steps - (1 if ends_at_zero else 0)
