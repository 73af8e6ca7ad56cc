"""Library errors in the library's own words (`ctmtool.errors`): `param` in backticks, worded as --param by
the CLI; and the library keeps to that convention (no command-line flags in its messages)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ctmtool
from ctmtool.errors import UserError, as_flags

PACKAGE = Path(ctmtool.__file__).parent


@pytest.mark.parametrize("message,flags", [
    ("`nfe` must be at least 1, got 0", "--nfe must be at least 1, got 0"),
    ("no checkpoint in runs/a; set `run_dir` or `resume`",
     "no checkpoint in runs/a; set --run-dir or --resume"),
    ("`strength` must be in (0, 1]; `keep_unmasked` needs `mask`",
     "--strength must be in (0, 1]; --keep-unmasked needs --mask"),
    ("`solver` heun", "--solver heun"),
])
def test_as_flags_words_parameters_as_options(message, flags):
    assert as_flags(message) == flags


@pytest.mark.parametrize("message", [
    "plain message with no parameters",
    "a `Preset` class name and code like `x + 1` are not parameters",
    "an unmatched `backtick",
    "an option already written as --nfe stays",
    "`_private` and `9lives` are not parameter names",
])
def test_as_flags_leaves_everything_else_alone(message):
    assert as_flags(message) == message


def test_user_error_exit_code():
    assert UserError("x").exit_code == 2 and isinstance(UserError("x"), Exception)


def _user_error_messages(path: Path):
    """(line, text) of every `UserError(...)` message in a module; f-string fields read as {}."""

    def text(node) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(text(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return text(node.left) + text(node.right)
        return "{}"

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id",
                                                  getattr(node.func, "attr", None)) == "UserError":
            yield node.lineno, " ".join(text(a) for a in node.args)


def _flags_in_library_messages() -> set[str]:
    """`file --flag` for each flag a library UserError (outside ctmtool/cli) writes outside a quoted
    command."""
    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for _, msg in _user_error_messages(path):
            # a quoted shell command may show options
            for f in flag.findall(re.sub(r"`ctmtool [^`]*`", "", msg)):
                found.add(f"{path.relative_to(PACKAGE).as_posix()} {f}")
    return found


def test_library_messages_name_parameters_not_flags():
    """Outside `ctmtool/cli`, UserError messages write `param`, never --param (the CLI adds the flags)."""
    assert _flags_in_library_messages() == set()
