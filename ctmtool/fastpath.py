"""Fast paths for repeated network calls on the CPU: a traced, frozen Heun solve whose per-level work is folded.

`heun_program(net, sigmas, example)` traces the whole teacher solve for a fixed schedule and freezes it with the
network's weights (TorchScript). Each level enters the trace as a constant one-element tensor, so everything that
depends only on the level (the preconditioning coefficients, the noise embedding and the layers that map it) is
computed once when the program is frozen, and Python's per-operation dispatch is gone: what runs per step is the
denoiser's data path alone. The arithmetic is that of `solvers.heun`, step for step; results agree with it to
float32 rounding (the folded embedding is computed for one row instead of B, which a matrix library may sum in
another order), see tests/test_fastpath.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn


class _HeunSolve(nn.Module):
    """Heun steps over fixed levels (Karras et al. 2022, Alg. 1, S_churn = 0), Euler into a final 0."""

    def __init__(self, net: nn.Module, sigmas: list[float], with_labels: bool):
        super().__init__()
        self.net, self.sigmas, self.with_labels = net, sigmas, with_labels

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = labels if self.with_labels else None
        x = x.float()
        levels = [torch.tensor([s], dtype=torch.float32) for s in self.sigmas]  # constants of the trace
        for t, nxt in zip(levels[:-1], levels[1:], strict=True):
            d = (x - self.net.denoise(x, t, labels)) / t
            x_next = x + (nxt - t) * d
            if float(nxt) > 0:
                d2 = (x_next - self.net.denoise(x_next, nxt, labels)) / nxt
                x_next = x + (nxt - t) * 0.5 * (d + d2)
            x = x_next
        return x


def heun_program(net: nn.Module, sigmas, example: torch.Tensor,
                 labels: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """A frozen TorchScript program x -> Heun solve of `net` over `sigmas` (decreasing, optionally ending at 0),
    for inputs shaped like `example` (and `labels` of the same batch when the model is conditional)."""
    levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    solve = _HeunSolve(net, levels, labels is not None).eval()
    args = (example,) if labels is None else (example, labels)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks taken as constants: shapes are fixed
        prog = torch.jit.freeze(torch.jit.trace(solve, args, check_trace=False))

    def run(x: torch.Tensor, lab: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return prog(x) if labels is None else prog(x, lab)

    return run
