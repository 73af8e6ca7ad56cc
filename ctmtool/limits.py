"""What one request may ask for: the one table of limits that the command line, the server and the library
check.

A request above a limit (`--nfe 1000000`, `--steps 100000000`, `--kimg 1e12`) is refused before any work with
a line naming the limit; `no_limits` (`--no-limits` on the command line) lifts every limit of this table for
that request, and says so on stderr. The limits are far above any published setting (the CTM paper samples
with NFE 1-18, trains for at most 100k kimg; likelihoods use about 100-1000 fixed steps), so only a typo or an
abuse meets them.
"""

from __future__ import annotations

import math
import os

from ctmtool.errors import UserError

LIMITS: dict[str, float] = {
    "nfe": 1000,            # network evaluations of one sample (gamma-sampling jumps, translation steps)
    "steps": 10_000,        # solver grid points (Heun/Euler sampling, fixed-step likelihood solvers)
    "kimg": 1_000_000,      # thousands of training images in one run (1e9 images)
    "minutes": 30 * 24 * 60,  # training time of one run (30 days)
    "n": 10_000_000,        # items sampled, translated or scored in one request
    "probes": 1000,         # Hutchinson probes per item
    "elbo_samples": 100_000,  # (sigma, noise) pairs per item of the ELBO
    "dequant_draws": 1000,  # dequantisation draws per image
}


def check_limits(no_limits: bool = False, **values: float | int | None) -> None:
    """Refuse any value above its limit in `LIMITS` (None: not given); `no_limits` lifts them all."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"`{name}` must be a finite number, got {value}")
        if no_limits:
            continue
        limit = LIMITS[name]
        if value > limit:
            raise UserError(f"`{name}` {_num(value)} is over the limit of {_num(limit)} per request "
                            "(docs/bad-input.md); lower it, or pass `no_limits` if you mean it")


def lifted_note(no_limits: bool) -> str | None:
    """The line a command prints on stderr when a request runs without limits."""
    return ("--no-limits: the per-request limits (ctmtool/limits.py) are off for this command" if no_limits
            else None)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def free_memory() -> int | None:
    """Bytes of memory free for new allocations on this machine (None when the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(items: int, shape: tuple[int, ...], what: str, copies: int = 4) -> None:
    """Refuse, before allocating, a batch whose float32 tensors alone (`copies` of `items` x `shape`: inputs,
    noise, outputs, gradients) exceed the free memory: a floor of what the step needs (activations come on
    top)."""
    need = items * math.prod(shape) * 4 * copies
    free = free_memory()
    if free is not None and need > 0.8 * free:
        raise UserError(f"a batch of {items} items of shape {tuple(shape)} needs at least {need / 2**30:.1f} "
                        f"GiB, more than the {free / 2**30:.1f} GiB of free memory; lower {what}")
