"""How the library reports progress: an object with `log`, `warn` and `progress` (the CLI's `Reporter` is
one, with rich bars and plain lines). Library functions take one as an argument; `Quiet` says nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    def log(self, msg: str) -> None: ...

    def warn(self, msg: str) -> None: ...

    def progress(self, total: float, description: str, unit: str = ""): ...


class Quiet:
    """A reporter that reports nothing (the default for Python callers and for torchrun ranks other than
    0)."""

    def log(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    @contextmanager
    def progress(self, total: float, description: str, unit: str = "") -> Iterator[Callable[..., None]]:
        yield lambda n=1, status="": None
