"""`ctmtool translate`: one-step translation with a GCTM (registered once GCTM training lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
