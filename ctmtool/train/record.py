"""What a run keeps of itself in its directory, as EDM's training does: `stats.jsonl` (one JSON object per log
point: step, kimg, the losses and loss weights of that stretch, img/s, learning rates, seconds) and `log.txt`
(every line the run reported, with the time). A new run (`force`) starts both afresh; a resumed one
appends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STATS = "stats.jsonl"
LOG = "log.txt"


class RunRecord:
    """A reporter (`ctmtool.progress.Progress`) that also writes the run's log.txt, and appends
    stats.jsonl."""

    def __init__(self, run_dir: str | Path, rep, fresh: bool):
        self.run_dir, self.rep = Path(run_dir), rep
        self.tty = getattr(rep, "tty", False)
        if fresh:
            for name in (STATS, LOG):
                (self.run_dir / name).unlink(missing_ok=True)

    def _append(self, name: str, line: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def log(self, msg: str) -> None:
        self.rep.log(msg)
        self._append(LOG, f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}")

    def warn(self, msg: str) -> None:
        self.rep.warn(msg)
        self._append(LOG, f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] warning: {msg}")

    @contextmanager
    def progress(self, total: float, description: str, unit: str = "") -> Iterator[Callable[..., None]]:
        with self.rep.progress(total, description, unit) as advance:
            yield advance

    def stats(self, record: dict) -> None:
        self._append(STATS, json.dumps(record))
