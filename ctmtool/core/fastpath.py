"""Fast paths for repeated network calls on the CPU: a traced, frozen Heun solve whose per-level work is
folded.

`heun_program(net, sigmas, example)` traces the whole teacher solve for a fixed schedule and freezes it with
the network's weights (TorchScript). Each level enters the trace as a constant one-element tensor, so
everything that depends only on the level (the preconditioning coefficients, the noise embedding and the
layers that map it) is computed once when the program is frozen, and Python's per-operation dispatch is gone:
what runs per step is the denoiser's data path alone. The arithmetic is that of `solvers.heun`, step for step;
results agree with it to float32 rounding (the folded embedding is computed for one row instead of B, which a
matrix library may sum in another order), see tests/test_fastpath.py.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    """A frozen TorchScript program x -> Heun solve of `net` over `sigmas` (decreasing, optionally ending at
    0), for inputs shaped like `example` (and `labels` of the same batch when the model is conditional)."""
    levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    solve = _HeunSolve(net, levels, labels is not None).eval()
    args = (example,) if labels is None else (example, labels)
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks taken as constants: shapes are fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch.jit is deprecated in favour of torch.compile, still here
        warnings.simplefilter("ignore", FutureWarning)
        prog = torch.jit.freeze(torch.jit.trace(solve, args, check_trace=False))

    def run(x: torch.Tensor, lab: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return prog(x) if labels is None else prog(x, lab)

    return run


# --------------------------------------------------------------------------------------------------
# Sampling many images on the CPU: a cache-sized batch and the whole solve traced once

# input values per CPU batch (16 CIFAR images): a U-Net's activations stay in the cache
CPU_BATCH_VALUES = 1 << 16
# tracing cifar10-fast's solve costs about 6 s (loaded CPU); it pays back from a few batches
PROGRAM_MIN_BATCHES = 4


@dataclass(frozen=True)
class SamplingChoice:
    """How `generate` runs a job: images per batch, and whether full batches go through a traced program."""

    batch: int
    program: bool
    reason: str

    def describe(self) -> str:
        how = "traced TorchScript program" if self.program else "eager PyTorch"
        return f"sampling path: {how}, batch {self.batch} ({self.reason})"


def cpu_batch(data_shape: tuple[int, ...], most: int) -> int:
    """The largest power of two of images whose inputs hold at most CPU_BATCH_VALUES values (1 at least,
    `most` at most). One batch of 256 CIFAR images overflowed the cache: 73.7 ms per image against 45.7 at
    batch 16 (docs/performance.md)."""
    per_item = math.prod(data_shape)
    b = 1 << max(0, int(math.log2(max(1, CPU_BATCH_VALUES // per_item))))
    return max(1, min(b, most))


def choose_sampling(model, device, n: int, plan, batch_given: bool, fast: bool = True) -> SamplingChoice:
    """The sampling path for `n` samples with `plan` (a `SamplingPlan`): on the CPU (unless `fast` is off) a
    cache-sized batch where the user gave none (`batch_given`), and a traced program when the solve draws no
    noise (gamma = 0 or one jump; teacher ODE solvers), the model is an image network and the job has at least
    PROGRAM_MIN_BATCHES full batches; elsewhere the plan's batch eagerly."""
    if torch.device(device).type != "cpu":
        return SamplingChoice(plan.batch, False, "not on the CPU")
    if not fast:
        return SamplingChoice(plan.batch, False, "fast path off")
    b = plan.batch if batch_given else cpu_batch(model.data_shape, plan.batch)
    why = "given batch" if batch_given else f"cache-sized CPU batch for {tuple(model.data_shape)}"
    deterministic = plan.solver != "gamma" or plan.gamma == 0 or len(plan.schedule) == 2
    if model.kind == "analytic" or not model.is_image:
        return SamplingChoice(b, False, f"{why}; only image networks are traced")
    if not deterministic:
        return SamplingChoice(b, False, f"{why}; gamma > 0 draws noise between jumps: eager")
    if n < PROGRAM_MIN_BATCHES * b:
        return SamplingChoice(b, False, f"{why}; {n} samples are fewer than {PROGRAM_MIN_BATCHES} batches: "
                                        "tracing would not pay")
    return SamplingChoice(b, True, f"{why}; {n // b} full batches through one traced solve")


class _Solve(nn.Module):
    def __init__(self, model, plan, with_labels: bool, sink: list | None = None):
        super().__init__()
        self.model, self.net, self.plan, self.with_labels = model, model.net, plan, with_labels
        self.sink = sink  # receives the output of the call that is traced: the first batch's samples

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        from ctmtool.core.sampling import sample_from

        x = sample_from(self.model, z, self.plan, None, labels if self.with_labels else None)
        if self.sink is not None:
            self.sink.append(x.detach().clone())
        return x


PROGRAM_CACHE_ENV = "CTMTOOL_PROGRAM_CACHE"  # a folder for traced programs; "off" keeps none


def program_cache_dir() -> Path | None:
    """Where traced sampling programs are kept between runs: $CTMTOOL_PROGRAM_CACHE, else
    $XDG_CACHE_HOME/ctmtool/programs (~/.cache/ctmtool/programs); None when the variable is "off"."""
    value = os.environ.get(PROGRAM_CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctmtool" / "programs"


@functools.cache
def _source_digest() -> str:
    """The code a traced solve is made of (this package's maths and networks, as first read in this process)
    and the torch that traced it."""
    h = hashlib.sha256(torch.__version__.encode())
    root = Path(__file__).resolve().parent.parent
    for f in sorted([*root.glob("core/*.py"), *root.glob("nets/*.py"), *root.glob("kernels/*.py")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def program_key(model, plan, conditional: bool) -> str:
    """Digest of everything a traced program depends on: the network's tensors (names, dtypes, shapes, bytes),
    the model's kind and data shape, the sampling plan (batch included), and `_source_digest`."""
    h = hashlib.sha256(_source_digest().encode())
    fields = (model.kind, tuple(model.data_shape), conditional, plan.solver, plan.gamma, plan.noise,
              plan.class_label, plan.batch, plan.sigmas, type(model.net).__name__)
    h.update(repr(fields).encode() + model.preset.model_dump_json().encode())
    h.update(plan.schedule.detach().cpu().double().contiguous().numpy().tobytes())
    for name, t in model.net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def sampling_program(model, plan, cache: Path | None = None,
                     log: Callable[[str], None] | None = None) -> Callable[..., torch.Tensor]:
    """The sampler's solve of one full batch of `plan.batch` items, (z, labels) -> x, traced and frozen
    (TorchScript): the same operations without Python's per-operation dispatch, within float32 rounding of the
    eager solve. Only for plans that draw no noise between jumps (`choose_sampling`).

    The program is made on its first call, from that call's own inputs: tracing runs the eager solve once,
    and its output is returned as that batch's samples (no batch is computed only to trace). With a `cache`
    folder, a program traced before for the same network, plan and code (`program_key`) is loaded instead,
    and a new one is saved there (written to a temporary name, then renamed)."""
    conditional = bool(model.label_dim)
    path = cache / f"sample-{program_key(model, plan, conditional)}.pt" if cache is not None else None
    if log is not None and path is not None:
        how = "loaded from" if path.is_file() else "traced on the first batch into"
        log(f"sampling program: {how} {path}")
    state: dict = {}

    def build(x: torch.Tensor, labels: torch.Tensor | None):
        if path is not None and path.is_file():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    state["prog"] = torch.jit.load(str(path), map_location="cpu")
                return None
            except (RuntimeError, OSError, ValueError):  # a damaged or foreign file: trace a new one
                pass
        sink: list = []
        solve = _Solve(model, plan, conditional, sink).eval()
        args = (x, labels) if conditional else (x,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated (torch.compile)
            prog = torch.jit.freeze(torch.jit.trace(solve, args, check_trace=False))
        state["prog"] = prog
        if path is not None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    torch.jit.save(prog, str(tmp))
                os.replace(tmp, path)
            except (OSError, RuntimeError):  # a read-only or full cache folder costs the next run its tracing
                tmp.unlink(missing_ok=True)
        return sink[0]

    def run(x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            if "prog" not in state:
                first = build(x, labels)
                if first is not None:
                    return first
            return state["prog"](x, labels) if conditional else state["prog"](x)

    return run


def fast_plan(model, plan, device, n: int, batch_given: bool, fast: bool = True,
              log: Callable[[str], None] | None = None):
    """(plan with the chosen batch, program or None) for a job of `n` samples; the choice logged in one line.
    The one call `sample`, `fid` and `sweep` make (`ctmtool.jobs`)."""
    import dataclasses

    choice = choose_sampling(model, device, n, plan, batch_given, fast)
    if log is not None:
        log(choice.describe())
    plan = dataclasses.replace(plan, batch=choice.batch)
    return plan, (sampling_program(model, plan, program_cache_dir(), log) if choice.program else None)
