"""The training loop shared by teacher, CTM and GCTM training.

The loop owns time: data order, duration (images, or minutes of training time summed over every session of
the run), logging (and a heartbeat line every 10 s), periodic checkpoints in a rotation (by images and by
training time), sample grids, quality evaluation, resume and clean stops on SIGINT/SIGTERM. The objective owns
the maths: it receives the micro-batches of one optimiser step and updates its networks.

The learning-rate schedule's progress is computed once per step from what a checkpoint records (images seen
and training seconds so far), so a resumed run, time-limited or not, continues the schedule where it stopped.
A time limit or a signal is also checked between the micro-batches of an accumulated step: the step is then
abandoned (no update, its random draws undone) so that the saved state is that after the last whole step.

Objective interface:
    kind: str                                  checkpoint kind (teacher, ctm, gctm)
    step(batches, kimg) -> dict[str, Tensor]   one optimiser step; returns detached scalars to log
    checkpoint(meta) -> Checkpoint             every tensor needed to resume and to sample
    restore(ckpt)                              load all of it back
    rng_state() -> dict; set_rng_state(dict)   the random streams a step draws from
    optimizers: dict[str, Optimizer]           zeroed when a step is abandoned
    sampling_model() -> nn.Module              the network snapshots and evaluations sample from
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctmtool.checkpoint import Checkpoint, save_checkpoint
from ctmtool.config import TrainConfig
from ctmtool.core import distributed as ddp
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.limits import check_batch_memory
from ctmtool.progress import Quiet
from ctmtool.train.rundir import CKPT_GLOB, RunLock, checkpoint_name, make_run_dir, remove_leftovers, rotate

__all__ = ["CKPT_GLOB", "FitResult", "RunLock", "StopFlag", "fit"]

HEARTBEAT_S = 10.0  # longest silence on a stderr that is not a terminal



@dataclass
class FitResult:
    checkpoint: Path  # the last checkpoint written
    kimg: float  # images seen, in thousands
    steps: int  # optimiser steps
    seconds: float  # wall-clock training time (this session)
    images_per_second: float
    stopped_by: str  # kimg | minutes | signal SIGINT | signal SIGTERM
    last: dict = field(default_factory=dict)  # last logged values
    skipped_steps: int = 0  # non-finite losses skipped
    total_seconds: float = 0.0  # training time over every session of the run (resumes included)
    signum: int = 0  # the signal that stopped the run, 0 when none did


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps and micro-batches, saves and returns."""

    def __init__(self):
        self.signal: str | None = None  # its name
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal, self.signum = signal.Signals(signum).name, signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class _Position:
    """Where the run stands: what a checkpoint's meta records and a resume restores."""

    step: int = 0  # optimiser steps taken
    kimg: float = 0.0  # images seen, in thousands
    skipped: int = 0  # steps skipped for non-finite losses
    seconds: float = 0.0  # training seconds of the sessions before this one
    progress: float = 0.0  # done fraction that set the last step's learning rate

    @classmethod
    def of(cls, ckpt: Checkpoint) -> _Position:
        m = ckpt.meta
        try:
            return cls(int(m["step"]), float(m["kimg"]), int(m.get("skipped_steps", 0)),
                       float(m.get("train_seconds", 0.0)), float(m.get("progress", 0.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"checkpoint {ckpt.path} has a damaged training position in its header "
                            f"({err!r}); resume from an earlier checkpoint") from None

    def meta(self, batch: int, seconds: float) -> dict:
        return {"step": self.step, "kimg": self.kimg, "batch": batch, "skipped_steps": self.skipped,
                "train_seconds": seconds, "progress": self.progress}


class _Budget:
    """Training time over every session of a run: the earlier sessions' seconds plus this session's clock."""

    def __init__(self, minutes: float | None, seconds_before: float, clock: Callable[[], float]):
        self.limit = None if minutes is None else 60.0 * minutes
        self.before, self.clock, self.t0 = seconds_before, clock, clock()

    def session(self) -> float:
        return self.clock() - self.t0

    def total(self) -> float:
        return self.before + self.session()

    def fraction(self, total: float) -> float:
        return total / self.limit if self.limit else 0.0

    def spent(self, total: float) -> bool:
        return self.limit is not None and total >= self.limit


class _Halt(Exception):
    """Raised between two micro-batches to abandon the step: the time budget is spent or a signal came."""

    def __init__(self, reason: str):
        self.reason = reason


class _MicroBatches:
    """The micro-batches of one optimiser step, drawn as the objective iterates; before each one but the
    first, `between(i)` may raise `_Halt`, so a long accumulated step overruns a time limit by at most one
    micro-batch."""

    def __init__(self, draw: Callable[[], tuple], n: int, between: Callable[[int], None]):
        self.draw, self.n, self.between = draw, n, between

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            if i:
                self.between(i)
            yield self.draw()


class _Lines:
    """Progress lines: means of the step logs every `log_every_kimg`, and a heartbeat whenever `every` seconds
    passed without a line (None: no heartbeat; a terminal shows a live bar instead)."""

    def __init__(self, rep, clock: Callable[[], float], total_kimg: float, every: float | None):
        self.rep, self.clock, self.total_kimg, self.every = rep, clock, total_kimg, every
        self.rep_tty = every is None  # a terminal shows the bar (with the losses) instead of lines
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.last: dict = {}
        self.said = clock()

    def add(self, out: dict) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach()
        self.n += 1

    def flush(self, at: _Position, ips: float, lrs: dict | None = None, seconds: float | None = None,
              advance: Callable[..., None] | None = None) -> None:
        self.last = {k: float(v) / self.n for k, v in self.sums.items()}
        means = "  ".join(f"{k} {v:.4g}" for k, v in self.last.items())
        if advance is not None:  # the bar's status on a terminal: the latest losses and the speed
            advance(0, status=f"{means}  {ips:.0f} img/s")
        self._say(f"kimg {at.kimg:8.1f}  step {at.step:7d}  {means}  {ips:.0f} img/s")
        if hasattr(self.rep, "stats"):  # stats.jsonl: one object per log point (ctmtool.train.record)
            self.rep.stats({"step": at.step, "kimg": round(at.kimg, 6), **self.last,
                            "img_per_s": round(ips, 2), **{f"lr_{k}": v for k, v in (lrs or {}).items()},
                            "seconds": round(seconds if seconds is not None else 0.0, 3)})
        self.sums, self.n = {}, 0

    def heartbeat(self, at: _Position, ips: float, budget: _Budget, where: str = "") -> None:
        if self.every is None or self.clock() - self.said < self.every:
            return
        # minutes = 1e9 is how the CLI lifts a limit
        limited = budget.limit is not None and budget.limit < 6e7
        left = (f", {max(budget.limit - budget.total(), 0) / 60:.1f} of {budget.limit / 60:g} min left"
                if limited else "")
        # kimg = 1e9: the CLI lifted the limit
        of = f" of {self.total_kimg:g}" if self.total_kimg < 1e8 else ""
        self._say(f"kimg {at.kimg:8.1f}{of}  step {at.step:7d}  {ips:.0f} img/s  "
                  f"{budget.total():.0f}s trained{left}" + (f"  ({where})" if where else ""))

    def _say(self, msg: str) -> None:
        self.rep.log(msg)
        self.said = self.clock()


class _Saver:
    """Periodic checkpoints (by images and by training time), written by rank 0 and rotated."""

    def __init__(self, objective, order: torch.Generator, run_dir: Path, cfg: TrainConfig, budget: _Budget,
                 main: bool):
        (self.objective, self.order, self.run_dir, self.cfg, self.budget,
         self.main) = objective, order, run_dir, cfg, budget, main
        self.path: Path | None = None  # the last checkpoint written
        self.step = -1  # its step
        self.at_seconds = budget.before  # its training time

    def due(self, total: float) -> bool:
        every = self.cfg.ckpt_every_minutes
        return every is not None and total - self.at_seconds >= 60.0 * every

    def save(self, at: _Position, total: float) -> Path:
        """Write the state after `at.step` steps; reads the training state, never changes it."""
        path = self.run_dir / checkpoint_name(at.step)
        if self.main:  # rank 0 writes; the others only name the file
            ckpt = self.objective.checkpoint(at.meta(self.cfg.batch, self.budget.total()))
            ckpt.groups.setdefault("rng", {})["order"] = self.order.get_state()
            save_checkpoint(path, ckpt)
            rotate(self.run_dir, self.cfg.keep_checkpoints)
        self.path, self.step, self.at_seconds = path, at.step, total
        return path


def check_finite_data(data: Dataset) -> None:
    """Refuse training data holding NaN or infinite values (they would only turn every weight into NaN)."""
    v = data.values
    if not v.is_floating_point() or len(v) == 0:
        return
    bad = ~torch.isfinite(v.reshape(len(v), -1)).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        first = data.items[i] if data.items and i < len(data.items) else f"item {i}"
        raise UserError(f"the training data is at fault: {data.name} holds NaN or infinite values in "
                        f"{int(bad.sum())} of {len(v)} items (first: {first}); clean or remove them")


def _crossed(period: float | None, before: float, after: float) -> bool:
    return period is not None and math.floor(after / period) > math.floor(before / period)


def _stop_reason(stop: StopFlag, budget: _Budget, device: torch.device) -> tuple[str | None, float]:
    """Whether to stop now (the same answer on every rank), and the training seconds so far."""
    signalled, total = ddp.max_over_ranks([float(bool(stop.signal)), budget.total()], device)
    if budget.spent(total):
        return "minutes", total
    if signalled:
        return f"signal {stop.signal or 'on another rank'}", total
    return None, total


def _drawer(data: Dataset, micro: int, order: torch.Generator, xflip: bool, device: torch.device):
    def draw():
        idx = torch.randint(len(data), (micro,), generator=order)
        x, y = data.get(idx, device)
        if xflip and data.is_image:
            flip = (torch.rand(micro, generator=order) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    return draw


def _abandon(objective, order: torch.Generator, rng: tuple) -> None:
    """Undo a step stopped part-way: no update was made; its random draws and gradients are undone, so the
    state is that after the last whole step (and a resume continues as if the step had never begun)."""
    objective.set_rng_state(rng[0])
    order.set_state(rng[1])
    for opt in objective.optimizers.values():
        opt.zero_grad(set_to_none=True)


def _restore(objective, order: torch.Generator, resume: Checkpoint, rep) -> _Position:
    at = _Position.of(resume)
    try:
        objective.restore(resume)
        order.set_state(resume.state("rng")["order"])
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {resume.path} cannot be resumed: its training state is damaged or was "
                        f"written by another setup ({err!r}); resume from an earlier checkpoint or start a "
                        "new run") from None
    rep.log(f"resumed from {resume.path} at {at.kimg:.1f} kimg (step {at.step}, {at.seconds:.0f}s trained)")
    return at


def fit(objective, data: Dataset, cfg: TrainConfig, run_dir: str | Path, rep, *,
        device: torch.device, xflip: bool = False, resume: Checkpoint | None = None,
        snapshot: Callable[[int], None] | None = None, evaluate: Callable[[], dict] | None = None,
        max_bad_steps: int = 20, clock: Callable[[], float] = time.monotonic,
        locked: bool = False) -> FitResult:
    """Train `objective` on `data` until cfg.kimg thousand images or cfg.minutes of training time (summed over
    the sessions of a resumed run), whichever comes first. `clock` (seconds) is the loop's only time source.
    `locked`: the caller holds the run directory's `RunLock` (else `fit` takes it for the loop)."""
    run_dir = make_run_dir(Path(run_dir))
    check_finite_data(data)
    micro = cfg.micro_batch or cfg.batch
    accum = cfg.batch // micro
    check_batch_memory(micro, tuple(data.shape), "the batch (or set micro_batch)")
    ranks = ddp.world_size()
    if micro < ranks:  # every rank needs rows of its own
        raise UserError(f"the micro-batch ({micro}) is smaller than the number of ranks ({ranks}); "
                        f"raise batch / micro_batch to at least {ranks} or use fewer processes")
    main = ddp.is_main()
    data = data.to(device) if device.type == "cuda" else data
    order = torch.Generator().manual_seed(cfg.seed)
    at = _restore(objective, order, resume, rep) if resume is not None else _Position()
    start_kimg, bad_in_row, stopped_by = at.kimg, 0, "kimg"
    budget = _Budget(cfg.minutes, at.seconds, clock)
    saver = _Saver(objective, order, run_dir, cfg, budget, main)
    lines = _Lines(rep, clock, cfg.kimg, None if getattr(rep, "tty", False) else HEARTBEAT_S)
    draw = _drawer(data, micro, order, xflip, device)

    def ips() -> float:
        return (at.kimg - start_kimg) * 1000 / max(budget.session(), 1e-9)

    def between(i: int) -> None:
        reason, _ = _stop_reason(stop, budget, device)
        if reason:
            raise _Halt(reason)
        lines.heartbeat(at, ips(), budget, f"micro-batch {i + 1} of {accum}")

    def lrs() -> dict:
        return {name: opt.param_groups[0]["lr"] for name, opt in objective.optimizers.items()}

    # a bar on a terminal; elsewhere the log lines alone (one line format, see _Lines)
    bar = (rep.progress(cfg.kimg, "train", unit="kimg") if lines.rep_tty
           else Quiet().progress(cfg.kimg, "train"))
    with RunLock(run_dir) if main and not locked else nullcontext(), StopFlag() as stop, bar as advance:
        if main:
            remove_leftovers(run_dir)
        advance(at.kimg)
        while at.kimg < cfg.kimg:
            reason, total = _stop_reason(stop, budget, device)
            if reason:
                stopped_by = reason
                break
            progress = objective.progress = max(at.kimg / cfg.kimg, budget.fraction(total))
            rng = (objective.rng_state(), order.get_state()) if accum > 1 else None
            try:
                out = objective.step(_MicroBatches(draw, accum, between), at.kimg)
            except _Halt as halt:
                _abandon(objective, order, rng)
                stopped_by = halt.reason
                break
            if not out.pop("finite", True):
                at.skipped += 1
                bad_in_row += 1
                if bad_in_row >= max_bad_steps:
                    raise UserError(f"{bad_in_row} non-finite losses in a row at {at.kimg:.1f} kimg: "
                                    f"training diverged; last good checkpoint: {saver.path or 'none yet'}; "
                                    "lower the learning rate or use precision='fp32'")
                continue
            at.progress, bad_in_row = progress, 0
            before = at.kimg
            at.step += 1
            at.kimg += cfg.batch / 1000
            lines.add(out)
            advance(cfg.batch / 1000)
            if _crossed(cfg.log_every_kimg, before, at.kimg) or at.kimg >= cfg.kimg:
                lines.flush(at, ips(), lrs(), budget.total(), advance)
            else:
                lines.heartbeat(at, ips(), budget)
            if _crossed(cfg.ckpt_every_kimg, before, at.kimg) or saver.due(total):
                saver.save(at, total)
            if main and snapshot is not None and _crossed(cfg.snapshot_every_kimg, before, at.kimg):
                snapshot(at.step)
            if main and evaluate is not None and _crossed(cfg.eval_every_kimg, before, at.kimg):
                res = evaluate()
                rep.log(f"eval at {at.kimg:.1f} kimg: " + "  ".join(f"{k} {v:.5g}" for k, v in res.items()))
        if lines.n:  # stopped by the clock or a signal between two log lines: log what was not yet
            lines.flush(at, ips(), lrs(), budget.total(), advance)
        if saver.step != at.step or saver.path is None:
            saver.save(at, budget.total())
    ddp.barrier()
    signum = 0
    if stopped_by.startswith("signal"):
        signum = stop.signum or int(signal.SIGTERM)  # SIGTERM when another rank was the one signalled
        rep.log(f"stopped by {stopped_by}; saved {saver.path}")
    return FitResult(saver.path, at.kimg, at.step, budget.session(), ips(), stopped_by, lines.last,
                     at.skipped, budget.total(), signum)
