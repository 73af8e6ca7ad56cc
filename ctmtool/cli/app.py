"""The `ctmtool` command: a thin Typer layer; each subcommand lives in its own module of this package."""

from __future__ import annotations

from typing import Annotated

import typer

from ctmtool import __version__
from ctmtool.cli import (
    distill,
    export,
    fid,
    import_,
    likelihood,
    metrics,
    presets,
    sample,
    serve,
    teacher,
    translate,
)
from ctmtool.cli.common import Group, configure_logging

app = typer.Typer(
    cls=Group,  # usage errors are one `error:` line too
    name="ctmtool",
    help="Consistency Trajectory Models: train a teacher, distill a CTM, sample, score and translate.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: [brackets] stay visible
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"ctmtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Only warnings and errors on stderr (no progress).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also debug messages on stderr.")] = False,
) -> None:
    """Consistency Trajectory Models (Kim et al., ICLR 2024) and Generalized CTMs from one command line.

    Results go to stdout (JSON with --json); progress and logs go to stderr (-q: warnings only, -v: debug).
    With --out -, stdout carries .npz bytes and the result goes to stderr. Exit code 0 means success.
    """
    configure_logging(-1 if quiet else 1 if verbose else 0)


for module in (presets, teacher, import_, distill, sample, likelihood, fid, metrics, translate, export,
               serve):
    module.register(app)


def main() -> None:
    app()
