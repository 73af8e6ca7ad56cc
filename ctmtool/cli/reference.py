"""docs/cli.md, generated from the Typer app: every command, its arguments and every option (names, value,
default, help). `python -m ctmtool.cli.reference > docs/cli.md` rewrites it; tests/cli/test_grammar.py checks
that the file is current and that the same idea has the same option name everywhere."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import typer

HEADER = """# Command-line reference

Generated from the Typer app by `python -m ctmtool.cli.reference > docs/cli.md` (`tests/cli/test_grammar.py`
fails when this file is out of date). `ctmtool COMMAND --help` prints the same. Every command: results on
stdout (`--json` for one JSON object; tab-separated `key<TAB>value` lines when stdout is not a terminal), logs
and progress on stderr (`ctmtool -q` warnings only, `ctmtool -v` debug); with `--out -` stdout carries `.npz`
bytes and the result goes to stderr; `-` as an input reads `.npz` (or `.npy`) bytes on stdin.
"""


def click_root():
    from ctmtool.cli.app import app

    return typer.main.get_command(app)


def commands(group=None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """(path, click command) of every command users run, depth first; a group's hidden default command is
    listed under the group's own name (`fid`, `translate`)."""
    group = group or click_root()
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        default = getattr(cmd, "default_name", None)
        if cmd.hidden and not (default and name == default):
            continue
        if sub is not None:
            if default in sub:
                yield (*path, name), sub[default]
            elif cmd.callback is not None and cmd.params:
                yield (*path, name), cmd  # a group that is also a command (`sample`, `teacher`)
            yield from commands(cmd, (*path, name))
        elif default and name == default:
            continue  # listed under the group's name above
        else:
            yield (*path, name), cmd


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _option_row(opt, ctx) -> str:
    names = ", ".join(f"`{n}`" for n in [*opt.opts, *opt.secondary_opts])
    record = opt.get_help_record(ctx)  # ("-o, --out FILE.npz", help): the value is the last word
    value = record[0].rsplit(" ", 1)[-1] if record and not opt.is_flag and " " in record[0] else ""
    default = opt.default if opt.default not in (None, False, ()) and not callable(opt.default) else ""
    if opt.required:
        default = "(required)"
    return f"| {names} | {_cell(value)} | {_cell(default)} | {_cell(opt.help or '')} |"


def render() -> str:
    root = click_root()
    out = [HEADER]
    for path, cmd in commands(root):
        ctx = typer.main._click.Context(cmd, info_name=" ".join(("ctmtool", *path)))
        usage = " ".join(p for p in cmd.collect_usage_pieces(ctx))
        out.append(f"## `ctmtool {' '.join(path)}`\n")
        out.append(f"`ctmtool {' '.join(path)} {usage}`\n")
        out.append(_cell((cmd.help or "").split("\n\n")[0]) + "\n")
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        for a in args:
            out.append(f"- `{a.metavar or a.name.upper()}`: {_cell(getattr(a, 'help', '') or '')}")
        if args:
            out.append("")
        out.append("| option | value | default | what it does |\n|---|---|---|---|")
        opts = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
        out.extend(_option_row(o, ctx) for o in opts)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
