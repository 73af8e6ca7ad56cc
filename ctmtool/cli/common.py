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
import logging
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
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup
from typer.core import _click as click  # typer 0.29 parses with its own copy of click

from ctmtool.errors import Stopped, UserError, as_flags

# Options shared by several subcommands (typer reads these Annotated aliases): the same idea has the same
# name and short form in every command (tests/cli/test_grammar.py checks it).
JsonOpt = Annotated[bool,
                    typer.Option("--json", help="Print a machine-readable JSON result on stdout (on stderr "
                                                      "when stdout carries data: --out -).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda|cuda:N",
                                        help="cpu, cuda, cuda:N or auto (CUDA when available).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                  help="Override a preset field, e.g. --set teacher.batch=64 "
                                                       "(repeatable).")]
PresetOpt = Annotated[str, typer.Option("--preset", "-p", metavar="NAME|FILE.toml",
                                        help="Preset name (see `ctmtool presets`) or a .toml path.")]
CKPT_HELP = "Checkpoint file, or a run directory (its newest checkpoint)."
CkptOpt = Annotated[Path | None, typer.Option(
    "--ckpt", metavar="FILE|RUN_DIR", help=CKPT_HELP + " Default: the newest in --run-dir.")]
RequiredCkptOpt = Annotated[Path, typer.Option("--ckpt", metavar="FILE|RUN_DIR", help=CKPT_HELP)]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", metavar="DIR", help="Run directory whose newest checkpoint is used without --ckpt (default: "
                                     "runs/toy/ctm, where `ctmtool distill` writes with its default "
                                     "preset).")]
EmaOpt = Annotated[str, typer.Option("--ema", metavar="ema|net|target|ema_RATE",
                                     help="Which weights of the checkpoint: ema, net, target, or "
                                          "ema_<rate>.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the first item; item i uses seed + i.")]
BatchOpt = Annotated[int | None, typer.Option("--batch", "-b", metavar="N",
                                              help="Items per forward pass (does not change the results).")]
NoLimitsOpt = Annotated[bool, typer.Option(
    "--no-limits",
    help="Lift the per-request limits (NFE, steps, kimg, ...; ctmtool/limits.py) for this command.")]
OutOpt = Annotated[str, typer.Option("--out", "-o", metavar="FILE.npz|FILE.png|DIR|-",
                                     help="An .npz, a .png, a folder (one PNG per item) or - (.npz bytes on "
                                          "stdout).")]
CkptOrData = ("Images (folder, .zip, .npz, image file), - for .npz/.npy bytes on stdin, or a checkpoint "
              "(.safetensors, or a run directory: its newest checkpoint)")


LOGGER = "ctmtool"


class _PlainHandler(logging.Handler):
    """Timestamped lines on whatever sys.stderr is at the time (a pipe, a file, a test's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            line = f"warning: {msg}"
        else:
            line = f"[{time.strftime('%H:%M:%S', time.localtime(record.created))}] {msg}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        print(line, file=sys.stderr, flush=True)


def configure_logging(verbosity: int = 0) -> logging.Logger:
    """The `ctmtool` logger: -q (verbosity -1) warnings only, default info, -v (1) debug; rich's handler on a
    terminal, plain timestamped lines otherwise. Called by the root command on every invocation."""
    log = logging.getLogger(LOGGER)
    log.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    for h in list(log.handlers):
        log.removeHandler(h)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        log.addHandler(RichHandler(console=Console(stderr=True, highlight=False), show_path=False,
                                   markup=False))
    else:
        log.addHandler(_PlainHandler())
    log.propagate = False
    return log


def logger() -> logging.Logger:
    """The `ctmtool` logger, configured with the defaults when the root command has not done it (library
    use)."""
    log = logging.getLogger(LOGGER)
    return log if log.handlers else configure_logging(0)


class Reporter:
    """Progress and results for one command invocation; nothing global."""

    def __init__(self, json_mode: bool = False, quiet: bool = False, data_on_stdout: bool = False):
        self.json_mode = json_mode
        self.data_on_stdout = data_on_stdout  # stdout carries data (`--out -`): the result goes to stderr
        self.rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
        self.quiet = quiet or self.rank != 0 or not logger().isEnabledFor(logging.INFO)  # -q: warnings only
        # on a terminal the bars share the log handler's console, so log lines print above a live bar
        self.err = next((h.console for h in logger().handlers if hasattr(h, "console")), None) \
            or Console(stderr=True, highlight=False)
        self.tty = self.err.is_terminal

    def log(self, msg: str) -> None:
        if not self.quiet:
            logger().info(msg)

    def debug(self, msg: str) -> None:
        if not self.quiet:
            logger().debug(msg)

    def warn(self, msg: str) -> None:
        logger().warning(msg)

    @contextmanager
    def progress(self, total: float, description: str, unit: str = "") -> Iterator[Callable[..., None]]:
        """Yield `advance(n=1, status="")`. Rich bar on a terminal; a plain line every ~10% otherwise."""
        if self.quiet:
            yield lambda n=1, status="": None
            return
        if self.tty:
            cols = [TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:.4g}/{task.total:.4g}"), TextColumn(unit),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
            with Progress(*cols, console=self.err, transient=False) as bar:
                task = bar.add_task(description, total=total, status="")
                yield lambda n=1, status="": bar.update(task, advance=n, status=status)
            return
        state = {"done": 0.0, "next": 0.0, "t0": time.time()}

        def advance(n: float = 1, status: str = "") -> None:
            state["done"] += n
            if state["done"] >= state["next"] or (state["done"] >= total and not state.get("ended")):
                done = min(state["done"], total)  # never past 100%
                state["ended"] = done >= total
                pct = 100.0 * done / total if total else 100.0
                el = time.time() - state["t0"]
                self.log(f"{description}: {done:g}/{total:g}{(' ' + unit) if unit else ''} ({pct:.0f}%, "
                         f"{el:.0f}s) {status}".rstrip())
                state["next"] = state["done"] + max(total / 10, 1e-9)

        yield advance

    def result(self, data: dict[str, Any], title: str = "result") -> None:
        """The command's result: JSON with --json, else a table (tab-separated lines when not on a terminal);
        on stdout, or on stderr when stdout carries data (`--out -`), so that stdout holds nothing but
        data."""
        if self.rank != 0:
            return
        stream = sys.stderr if self.data_on_stdout else sys.stdout
        if self.json_mode:
            print(json.dumps(data, default=_jsonable), file=stream, flush=True)
            return
        rows = [(str(k), _cell(v)) for k, v in data.items()]
        if not stream.isatty():
            stream.write("".join(f"{k}\t{' '.join(v.split())}\n" for k, v in rows))
            stream.flush()
            return
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for k, v in rows:
            table.add_row(k, v)
        Console(file=stream, highlight=False).print(table)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        v = json.dumps(v, default=_jsonable)
        return v if len(v) < 200 else v[:197] + "..."
    return str(v)


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


def select_device(name: str):
    """ctmtool.device.select_device, imported when a command runs (`--help` imports no torch)."""
    from ctmtool.device import select_device as select

    return select(name)


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
        except BrokenPipeError:
            exit_as_killed_by_sigpipe()
        except (MemoryError, torch_oom()) as err:
            logger().debug("the error in full (-v):", exc_info=True)
            raise _fail(f"out of memory ({type(err).__name__}); lower --batch or --n", 1) from None
        except OSError as err:
            logger().debug("the error in full (-v):", exc_info=True)
            where = f" ({err.filename})" if err.filename else ""
            raise _fail(f"{err.strerror or err}{where}; check the path, its permissions and the free disk "
                        "space", 1) from None
        except RuntimeError as err:
            if "can't allocate memory" not in str(err) and "not enough memory" not in str(err):
                raise  # torch's CPU allocator reports running out as a RuntimeError
            raise _fail("out of memory (the CPU allocator refused); lower --batch or --n", 1) from None
        except Exception as err:
            # a signal during an import surfaces as "ImportError: initialization failed"
            stopped = _stopped_within(err)
            if stopped is None:
                raise
            raise _fail(f"interrupted by {signal.Signals(stopped.signum).name}",
                        128 + stopped.signum) from None

    return wrapper


@contextmanager
def stop_on_signals():
    """While a command runs, SIGINT and SIGTERM raise `Stopped` (exit 130 / 143 and one line), in every
    command: servers, solvers and samplers alike. Training replaces these handlers with its own (save, then
    stop) and puts them back. Only the main thread can own signal handlers; elsewhere this does nothing."""
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
def exit_as_killed_by_sigpipe() -> None:
    """The reader of our stdout went away (`| head`): end quietly, as a writer killed by SIGPIPE does (the
    shell sees 141), with no error text and no second error while Python flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # not reached where the signal ends the process


def torch_oom() -> type[BaseException]:
    """torch.OutOfMemoryError when torch is loaded (it is not imported just to catch it)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "OutOfMemoryError", MemoryError) if torch is not None else MemoryError


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing output unless --force, and an output in a place that cannot be
    written."""
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


TYPE_METAVARS = {"int": "INT", "float": "FLOAT", "str": "TEXT", "Path": "PATH", "path": "PATH",
                 "bool": "BOOL"}


def _plain_type(label: str | None) -> str | None:
    """typer's `<int>`, `<list[str]>`, `<ode|elbo>` as INT, TEXT, ode|elbo."""
    if not label:
        return label
    label = label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return TYPE_METAVARS.get(label, label)


def plain_metavars(params: list) -> None:
    """Readable metavars: `--steps INT`, `--method ode|elbo`, `INPUT` (not `<int>`, `<str>`,
    `<list[str]>`)."""
    for p in params:
        if p.param_type_name == "argument":
            p.display_type_rich = lambda ctx: None  # the argument's metavar names it
        elif p.metavar is None:
            p.display_type = lambda ctx, _orig=p.display_type: _plain_type(_orig(ctx))


class Command(TyperCommand):
    """A subcommand with plain usage lines and readable metavars."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain_metavars(self.params)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return _plain_usage(super().collect_usage_pieces(ctx))


class DefaultCommand(Command):
    """A command of a `DefaultGroup`; the default one (run when the group's first argument is not a
    sub-command) has the group's name in its usage and errors (`ctmtool fid SAMPLES`), and its help lists the
    sub-commands."""

    @staticmethod
    def _default_of(ctx: click.Context):
        group = ctx.parent.command if ctx.parent else None
        return group if isinstance(group, DefaultGroup) and ctx.info_name == group.default_name else None

    def format_usage(self, ctx: click.Context, formatter) -> None:
        if self._default_of(ctx) is None:
            return super().format_usage(ctx, formatter)
        formatter.write_usage(ctx.parent.command_path, " ".join(self.collect_usage_pieces(ctx)))

    def format_help(self, ctx: click.Context, formatter) -> None:
        super().format_help(ctx, formatter)
        group = self._default_of(ctx)
        if group is not None:
            rows = [(name, cmd.get_short_help_str(80)) for name, cmd in group.commands.items()
                    if name != group.default_name and not cmd.hidden]
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class CommandGroup(TyperGroup):
    """A group that is also a command (`sample` and `sample sweep`): readable metavars and plain usage too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain_metavars(self.params)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return _plain_usage(super().collect_usage_pieces(ctx))


class DefaultGroup(TyperGroup):
    """A group with real sub-commands (`fid stats`, `translate edit`) whose other first arguments belong to
    its default command (`fid SAMPLES`); `GROUP --help` is the default command's help."""

    default_name = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # shell completion of the next word: offer sub-commands
        completing = ctx.resilient_parsing and not args
        if not completing and (not args or args[0] not in self.commands):
            args = [self.default_name, *args]
        return super().parse_args(ctx, args)

    def get_help(self, ctx: click.Context) -> str:  # `ctmtool fid --help` without arguments reaches here too
        cmd = self.commands[self.default_name]
        with cmd.make_context(self.default_name, ["--help"], parent=ctx, resilient_parsing=True) as sub:
            return cmd.get_help(sub)


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
            ctx = getattr(err, "ctx", None)
            if ctx is not None and isinstance(ctx.command, DefaultCommand) \
                    and DefaultCommand._default_of(ctx):
                ctx = ctx.parent  # `ctmtool fid`, not `ctmtool fid run`
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {' '.join(err.format_message().split())}{hint}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr, flush=True)
            sys.exit(1)
        except BrokenPipeError:
            exit_as_killed_by_sigpipe()
        sys.exit(rv if isinstance(rv, int) else 0)
