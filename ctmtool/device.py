"""Devices and numeric precision, decided here and nowhere else.

Policy (read by every command, every objective and the benchmarks):
- device: `select_device("auto")` is CUDA when available, else the CPU; an explicit name is checked.
- training: bf16 autocast on CUDA when the preset asks (`precision = "bf16"`, the default); the CPU always
  runs float32 (bf16 there is slow and not what CI checks).
- what stays float32 under autocast: the preconditioning (c_skip, c_out, c_in and the skip connection, in
  `precond.py` the network output is cast back with `.float()`), the ODE solver state (`solvers.py`, levels
  in float64), losses and their reductions, EMA and optimiser state (parameters are float32 masters).
- matmuls outside autocast: full float32 ("highest": no TF32), so that GPU samples, likelihoods and FIDs
  agree with the CPU to float32 round-off; `tf32=True` trades that for speed where a user asks.
- CPU threads: training a small network (under `SMALL_NETWORK` parameters) on the CPU uses one thread unless
  OMP_NUM_THREADS says otherwise (`cpu_threads`). Its small matmuls gain nothing from a second thread, and
  on a busy machine OpenMP's spinning threads made a toy step 5-10x slower; one thread also makes the run's
  floating-point reductions the same on every machine, whatever its core count.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

from ctmtool.errors import UserError


def select_device(name: str = "auto", tf32: bool = False) -> torch.device:
    """cpu, cuda, cuda:N, or auto (CUDA when available); a CUDA device without a GPU is refused. Choosing the
    device puts the precision policy in force (`configure_matmul`): that is the one place it is decided."""
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for but no CUDA GPU is available; use cpu")
    configure_matmul(tf32)
    return dev


def configure_matmul(tf32: bool = False) -> None:
    """Full float32 matmuls and convolutions (the default), or TF32 where speed matters more than
    exactness."""
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


SMALL_NETWORK = 5_000_000  # parameters


@contextmanager
def cpu_threads(device: torch.device, net: torch.nn.Module):
    """One torch thread while training a small network on the CPU (unless OMP_NUM_THREADS is set); restored
    after."""
    small = sum(p.numel() for p in net.parameters()) < SMALL_NETWORK
    if device.type != "cpu" or not small or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast on CUDA when precision is 'bf16'; a no-op on the CPU and for 'fp32'."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
