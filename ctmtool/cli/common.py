"""Output conventions shared by every subcommand.

- stdout carries results only: a JSON object with `--json`, else a readable table;
- stderr carries progress: rich bars on a terminal, plain timestamped lines otherwise;
- a `UserError` (and a usage error) becomes one line `error: ...` and exit code 2; a system error (disk
  full, no permission, out of memory) one line and exit code 1; success is exit code 0;
- outputs are never overwritten without `--force`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup
from typer.core import _click as click  # typer 0.29 parses with its own copy of click

from ctmtool.device import select_device  # noqa: F401  (re-exported for the commands)
from ctmtool.errors import Stopped, UserError, as_flags

# Options shared by several subcommands (typer reads these Annotated aliases).
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a preset field, e.g. --set teacher.batch=64 (repeatable).")]
PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `ctmtool presets`) or a .toml path.")]
CkptOpt = Annotated[Path | None, typer.Option(
    "--ckpt", help="Checkpoint file, or a run directory (its newest checkpoint). Default: the newest in --run-dir.")]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", help="Run directory whose newest checkpoint is used without --ckpt (default: runs/toy/ctm, where "
                      "`ctmtool distill` writes with its default preset).")]
EmaOpt = Annotated[str, typer.Option("--ema", help="Which weights of the checkpoint: ema, net, target, or ema_<rate>.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the first item; item i uses seed + i.")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Items per forward pass (does not change the results).")]
NoLimitsOpt = Annotated[bool, typer.Option(
    "--no-limits", help="Lift the per-request limits (NFE, steps, kimg, ...; ctmtool/limits.py) for this command.")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="An .npz, a .png, a folder (one PNG per item) or - (stdout).")]


class Reporter:
    """Progress and results for one command invocation; nothing global."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
        self.quiet = quiet or self.rank != 0
        self.err = Console(stderr=True, highlight=False)
        self.tty = self.err.is_terminal

    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.err.print(msg)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        if self.tty:
            self.err.print(f"[yellow]warning:[/yellow] {msg}")
        else:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, total: float, description: str, unit: str = "") -> Iterator[Callable[..., None]]:
        """Yield `advance(n=1, status="")`. Rich bar on a terminal; a plain line every ~10% otherwise."""
        if self.quiet:
            yield lambda n=1, status="": None
            return
        if self.tty:
            cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
            with Progress(*cols, console=self.err, transient=False) as bar:
                task = bar.add_task(description, total=total, status="")
                yield lambda n=1, status="": bar.update(task, advance=n, status=status)
            return
        state = {"done": 0.0, "next": 0.0, "t0": time.time()}

        def advance(n: float = 1, status: str = "") -> None:
            state["done"] += n
            if state["done"] >= state["next"] or state["done"] >= total:
                pct = 100.0 * state["done"] / total if total else 100.0
                el = time.time() - state["t0"]
                self.log(f"{description}: {state['done']:g}/{total:g}{(' ' + unit) if unit else ''} ({pct:.0f}%, {el:.0f}s) {status}".rstrip())
                state["next"] = state["done"] + max(total / 10, 1e-9)

        yield advance

    def result(self, data: dict[str, Any], title: str = "result") -> None:
        """The command's result: JSON on stdout with --json, else a two-column table."""
        if self.rank != 0:
            return
        if self.json_mode:
            print(json.dumps(data, default=_jsonable), flush=True)
            return
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for k, v in data.items():
            if isinstance(v, float):
                v = f"{v:.6g}"
            elif isinstance(v, list | dict):
                v = json.dumps(v, default=_jsonable)
                v = v if len(v) < 200 else v[:197] + "..."
            table.add_row(str(k), str(v))
        Console(highlight=False).print(table)


def _jsonable(o: Any):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


FLAG_NAMES = {"--class-label": "--class"}  # library parameter -> the option's name where they differ


def flags(message: str) -> str:
    """A library message in the command line's words (`nfe` -> --nfe, `class_label` -> --class)."""
    message = as_flags(message)
    for param, flag in FLAG_NAMES.items():
        message = message.replace(param, flag)
    return " ".join(message.split())  # one line


def _fail(message: str, code: int):
    print(f"error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn UserError into `error: ...` on stderr and exit code 2; a system error (disk full, no permission,
    out of memory) into one line and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with stop_on_signals():
                check_option_values(kwargs)
                return fn(*args, **kwargs)
        except UserError as err:
            raise _fail(flags(str(err)), err.exit_code) from None
        except Stopped as err:
            name = signal.Signals(err.signum).name
            raise _fail(f"interrupted by {name}", 128 + err.signum) from None
        except KeyboardInterrupt:
            raise _fail("interrupted by SIGINT", 130) from None
        except (MemoryError, torch_oom()) as err:
            raise _fail(f"out of memory ({type(err).__name__}); lower --batch or --n", 1) from None
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise _fail(f"{err.strerror or err}{where}; check the path, its permissions and the free disk space", 1) from None
        except RuntimeError as err:
            if "can't allocate memory" not in str(err) and "not enough memory" not in str(err):
                raise  # torch's CPU allocator reports running out as a RuntimeError
            raise _fail("out of memory (the CPU allocator refused); lower --batch or --n", 1) from None
        except Exception as err:
            stopped = _stopped_within(err)  # a signal during an import surfaces as "ImportError: initialization failed"
            if stopped is None:
                raise
            raise _fail(f"interrupted by {signal.Signals(stopped.signum).name}", 128 + stopped.signum) from None

    return wrapper


@contextmanager
def stop_on_signals():
    """While a command runs, SIGINT and SIGTERM raise `Stopped` (exit 130 / 143 and one line), in every command:
    servers, solvers and samplers alike. Training replaces these handlers with its own (save, then stop) and
    puts them back. Only the main thread can own signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stopped_within(err: BaseException) -> Stopped | None:
    seen = 0
    while err is not None and seen < 16:
        if isinstance(err, Stopped):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def check_option_values(options: dict[str, Any]) -> None:
    """Every number on the command line is finite and fits 64 bits (`--kimg inf`, `--n 1e30` are refused here,
    before any work): the one check of the options' types shared by every command."""
    for name, value in options.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"`{name}` must be a finite number, got {v}")
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                raise UserError(f"`{name}` is an integer of {v.bit_length()} bits; at most 64 bits")


def torch_oom() -> type[BaseException]:
    """torch.OutOfMemoryError when torch is loaded (it is not imported just to catch it)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "OutOfMemoryError", MemoryError) if torch is not None else MemoryError


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing output unless --force, and an output in a place that cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"output {p} is a folder; give a file name")
    if p.exists() and not force:
        raise UserError(f"output {p} already exists; pass --force to overwrite it or choose another path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {p}: {parent} is not a writable folder; choose another path")
    return p


def limits(rep: Reporter, no_limits: bool, **values) -> None:
    """`limits.check_limits` for a command; with --no-limits a warning says the limits are off."""
    from ctmtool.limits import check_limits, lifted_note

    check_limits(no_limits, **values)
    if no_limits:
        rep.warn(lifted_note(True))


def at_least(least: int, **values: int | None) -> None:
    """Refuse counts below `least` (`--n 0`, `--batch 0`, ...): the one way commands check numeric options."""
    for name, value in values.items():
        if value is not None and value < least:
            raise UserError(f"`{name}` must be at least {least} (got {value})")


def _plain_usage(pieces: list[str]) -> list[str]:
    """Usage pieces as click writes them: NAME for a required argument, [NAME] for an optional one."""
    out = []
    for piece in pieces:
        if piece.startswith("{") and piece.endswith("}"):
            piece = piece[1:-1]
        while piece.startswith("[[") and piece.endswith("]]"):
            piece = piece[1:-1]
        out.append(piece)
    return out


class Command(TyperCommand):
    """A subcommand with plain usage lines and, optionally, a second form `CMD WORD ...` with its own help
    (`subform` = (word, usage arguments, help text, option names shown))."""

    subform: tuple[str, str, str, tuple[str, ...]] | None = None

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return _plain_usage(super().collect_usage_pieces(ctx))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.subform and args and args[0] == self.subform[0] and any(a in ctx.help_option_names for a in args):
            click.echo(self.subform_help(ctx), color=ctx.color)
            ctx.exit()
        return super().parse_args(ctx, args)

    def subform_help(self, ctx: click.Context) -> str:
        word, usage, text, names = self.subform
        f = ctx.make_formatter()
        f.write_usage(f"{ctx.command_path} {word}", usage)
        f.write_paragraph()
        with f.indentation():
            f.write_text(text)
        records = [p.get_help_record(ctx) for p in self.get_params(ctx)
                   if p.param_type_name == "option" and (set(p.opts) & set(names) or p.name == "help")]
        with f.section("Options"):
            f.write_dl([r for r in records if r])
        return f.getvalue().rstrip("\n")


def subform_command(word: str, usage: str, text: str, names: tuple[str, ...]) -> type[Command]:
    """A `Command` class whose `CMD WORD --help` prints the help of that form."""
    return type(f"{word.title()}Command", (Command,), {"subform": (word, usage, text, names)})


class Group(TyperGroup):
    """The root group: a usage error (unknown option, a value of the wrong type) is one `error:` line too."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click.ClickException as err:
            hint = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) is not None else ""
            print(f"error: {' '.join(err.format_message().split())}{hint}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr, flush=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)
