"""Issue 16 item 8: one name per idea in every command, complete help texts, plain usage lines, and the second
forms (`fid stats`, `translate edit`) with their own help."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ctmtool.cli.app import app

COMMANDS = [["presets"], ["teacher"], ["teacher", "import"], ["distill"], ["sample"], ["sample", "sweep"],
            ["likelihood"], ["fid"], ["fid", "stats"], ["metrics"], ["translate"], ["translate", "edit"]]
READS_A_CHECKPOINT = [["sample"], ["sample", "sweep"], ["likelihood"], ["fid"], ["metrics"], ["translate"],
                      ["translate", "edit"]]
WRITES_AN_OUTPUT = [["teacher", "import"], ["sample"], ["sample", "sweep"], ["fid", "stats"], ["translate"],
                    ["translate", "edit"]]


def _help(*cmd: str) -> str:
    r = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    return r.stdout


def test_top_level_list_is_not_cut():
    text = _help()
    commands = text.split("Commands:")[1]
    assert "..." not in commands
    entries = re.findall(r"^  (\S+)\s+(.*(?:\n {4,}\S.*)*)", commands, flags=re.M)
    assert {name for name, _ in entries} == {"presets", "teacher", "distill", "sample", "likelihood", "fid",
                                             "metrics",
                                              "translate", "import", "export", "serve"}
    for name, desc in entries:
        desc = " ".join(desc.split())
        assert desc.endswith((".", ")")), (name, desc)  # a whole sentence, not a cut phrase


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_usage_lines_are_plain(cmd):
    usage = _help(*cmd).splitlines()[0]
    assert usage.startswith(f"Usage: ctmtool {' '.join(cmd)} ")
    assert "{" not in usage and "[[" not in usage and "]]" not in usage, usage


def test_second_forms_have_their_own_help():
    stats = _help("fid", "stats")
    assert "Usage: ctmtool fid stats [OPTIONS] [DATA]" in stats
    assert "--name" in stats and "--no-features" in stats
    assert not re.search(r"^\s+(-r, )?--(kid|ref)\b", stats, flags=re.M)  # options of the other form
    edit = _help("translate", "edit")
    assert "Usage: ctmtool translate edit [OPTIONS] IMAGE" in edit
    assert ("--strength" in edit and "--strokes" in edit
            and not re.search(r"^\s+--degrade\b", edit, flags=re.M))
    assert "--kid" in _help("fid") and "--degrade" in _help("translate")
    # real sub-commands: listed in the group's help, and the root lists the groups
    assert (re.search(r"^  stats\s", _help("fid"), flags=re.M)
            and re.search(r"^  edit\s", _help("translate"), flags=re.M))


@pytest.mark.parametrize("cmd", READS_A_CHECKPOINT, ids=" ".join)
def test_one_name_for_which_weights(cmd):
    text = _help(*cmd)
    assert "--ema" in text and "--which" not in text


@pytest.mark.parametrize("cmd", WRITES_AN_OUTPUT, ids=" ".join)
def test_one_name_for_the_output(cmd):
    text = _help(*cmd)
    assert re.search(r"-o, --out\b", text) and "--output" not in text


@pytest.mark.parametrize("cmd", [["sample"], ["sample", "sweep"], ["likelihood"]], ids=" ".join)
def test_run_dir_default_is_the_same(cmd):
    assert "default: runs/toy/ctm" in " ".join(_help(*cmd).split())
