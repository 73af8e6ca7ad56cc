"""The training loop shared by teacher, CTM and GCTM training.

The loop owns time: data order, duration (images or minutes), logging, periodic checkpoints in a
rotation, sample grids, quality evaluation, resume and clean stops on SIGINT/SIGTERM. The objective
owns the maths: it receives the micro-batches of one optimiser step and updates its networks.

Objective interface:
    kind: str                                  checkpoint kind (teacher, ctm, gctm)
    step(batches, kimg) -> dict[str, Tensor]   one optimiser step; returns detached scalars to log
    checkpoint(meta) -> Checkpoint             every tensor needed to resume and to sample
    restore(ckpt)                              load all of it back
    sampling_model() -> nn.Module              the network snapshots and evaluations sample from
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctmtool.checkpoint import Checkpoint, save_checkpoint
from ctmtool.config import TrainConfig
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.train import distributed as ddp

CKPT_GLOB = "ckpt-*.safetensors"


@dataclass
class FitResult:
    checkpoint: Path  # the last checkpoint written
    kimg: float  # images seen, in thousands
    steps: int  # optimiser steps
    seconds: float  # wall-clock training time (this session)
    images_per_second: float
    stopped_by: str  # kimg | minutes | signal
    last: dict = field(default_factory=dict)  # last logged values
    skipped_steps: int = 0  # non-finite losses skipped


class RunLock:
    """An exclusive lock file in the run directory: a second writer is refused with a clear message."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = self.path.read_text().strip() or "?"
            if pid.isdigit() and not _alive(int(pid)):
                self.path.unlink(missing_ok=True)
                return self.__enter__()
            raise UserError(f"run directory {self.path.parent} is in use by process {pid}; wait for it, "
                            f"or delete {self.path} if that process is gone") from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps, saves and returns."""

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def rotate(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` periodic checkpoints."""
    files = sorted(run_dir.glob(CKPT_GLOB))
    for f in files[:-keep]:
        f.unlink(missing_ok=True)


def fit(objective, data: Dataset, cfg: TrainConfig, run_dir: str | Path, rep, *,
        device: torch.device, xflip: bool = False, resume: Checkpoint | None = None,
        snapshot: Callable[[int], None] | None = None, evaluate: Callable[[], dict] | None = None,
        max_bad_steps: int = 20) -> FitResult:
    """Train `objective` on `data` until cfg.kimg thousand images or cfg.minutes, whichever comes first."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    micro = cfg.micro_batch or cfg.batch
    accum = cfg.batch // micro
    ddp.check_batch(micro)
    main = ddp.is_main()
    data = data.to(device) if device.type == "cuda" else data
    order = torch.Generator().manual_seed(cfg.seed)
    step, kimg_done, bad_in_row, skipped = 0, 0.0, 0, 0
    if resume is not None:
        objective.restore(resume)
        step, kimg_done = int(resume.meta["step"]), float(resume.meta["kimg"])
        order.set_state(resume.groups["rng"]["order"])
        skipped = int(resume.meta.get("skipped_steps", 0))
        rep.log(f"resumed from {resume.path} at {kimg_done:.1f} kimg (step {step})")

    def batch_iter():
        idx = torch.randint(len(data), (micro,), generator=order)
        x, y = data.get(idx, device)
        if xflip and data.is_image:
            flip = (torch.rand(micro, generator=order) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    def save(tag_step: int) -> Path:
        if not main:  # rank 0 writes; the others only name the file
            return run_dir / checkpoint_name(tag_step)
        meta = {"step": tag_step, "kimg": kimg_done, "batch": cfg.batch, "skipped_steps": skipped}
        ckpt = objective.checkpoint(meta)
        ckpt.groups.setdefault("rng", {})["order"] = order.get_state()
        path = save_checkpoint(run_dir / checkpoint_name(tag_step), ckpt)
        rotate(run_dir, cfg.keep_checkpoints)
        return path

    def crossed(period: float | None, before: float, after: float) -> bool:
        return period is not None and math.floor(after / period) > math.floor(before / period)

    t0 = time.time()
    seconds_before = 0.0
    start_kimg = kimg_done
    logs: dict[str, torch.Tensor] = {}
    n_logged = 0
    last: dict = {}
    stopped_by = "kimg"
    last_saved: Path | None = None
    last_saved_step = -1
    with RunLock(run_dir) if main else nullcontext(), StopFlag() as stop, rep.progress(cfg.kimg, "train", unit="kimg") as advance:
        advance(kimg_done)
        while kimg_done < cfg.kimg:
            signalled, minutes = ddp.max_over_ranks([float(bool(stop.signal)), (time.time() - t0) / 60], device)
            if cfg.minutes is not None and minutes >= cfg.minutes:
                stopped_by = "minutes"
                break
            if signalled:
                stopped_by = f"signal {stop.signal or 'on another rank'}"
                break
            elapsed_frac = minutes / cfg.minutes if cfg.minutes else 0.0
            objective.progress = max(kimg_done / cfg.kimg, elapsed_frac)
            batches = [batch_iter() for _ in range(accum)]
            out = objective.step(batches, kimg_done)
            if not out.pop("finite", True):
                skipped += 1
                bad_in_row += 1
                if bad_in_row >= max_bad_steps:
                    path = last_saved or "none yet"
                    raise UserError(f"{bad_in_row} non-finite losses in a row at {kimg_done:.1f} kimg: training diverged; "
                                    f"last good checkpoint: {path}; lower the learning rate or use precision='fp32'")
                continue
            bad_in_row = 0
            before = kimg_done
            step += 1
            kimg_done += cfg.batch / 1000
            for k, v in out.items():
                logs[k] = logs.get(k, 0) + v.detach()
            n_logged += 1
            advance(cfg.batch / 1000)
            if crossed(cfg.log_every_kimg, before, kimg_done) or kimg_done >= cfg.kimg:
                last = {k: float(v) / n_logged for k, v in logs.items()}
                el = time.time() - t0
                ips = (kimg_done - start_kimg) * 1000 / max(el, 1e-9)
                rep.log(f"kimg {kimg_done:8.1f}  step {step:7d}  " + "  ".join(f"{k} {v:.4g}" for k, v in last.items())
                        + f"  {ips:.0f} img/s")
                logs, n_logged = {}, 0
            if crossed(cfg.ckpt_every_kimg, before, kimg_done):
                last_saved, last_saved_step = save(step), step
            if main and snapshot is not None and crossed(cfg.snapshot_every_kimg, before, kimg_done):
                snapshot(step)
            if main and evaluate is not None and crossed(cfg.eval_every_kimg, before, kimg_done):
                res = evaluate()
                rep.log(f"eval at {kimg_done:.1f} kimg: " + "  ".join(f"{k} {v:.5g}" for k, v in res.items()))
        if last_saved_step != step or last_saved is None:
            last_saved = save(step)
    ddp.barrier()
    seconds = time.time() - t0 + seconds_before
    ips = (kimg_done - start_kimg) * 1000 / max(seconds, 1e-9)
    if stopped_by.startswith("signal"):
        rep.log(f"stopped by {stopped_by}; saved {last_saved}")
    return FitResult(last_saved, kimg_done, step, seconds, ips, stopped_by, last, skipped)
