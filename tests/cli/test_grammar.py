"""One grammar: the same idea has the same option names in every command, readable metavars, choices checked
as choices, docs/cli.md current, and `--help` / `--version` fast (no torch imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.cli.reference import commands, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

IDEAS = {  # every spelling of an idea, in every command that has it
    "output": {"--out", "-o"},
    "how many": {"--num-samples", "-n", "--n"},
    "batch": {"--batch", "-b"},
    "checkpoint": {"--ckpt"},
    "which weights": {"--ema"},
    "preset": {"--preset", "-p"},
    "device": {"--device"},
    "seed": {"--seed"},
    "overwrite": {"--force"},
    "json": {"--json"},
    "run directory": {"--run-dir"},
    "preset override": {"--set"},
}
FORBIDDEN = {"--output", "--which", "--checkpoint", "--batch-size", "--n-samples", "--nsamples", "--model"}
ALL = list(commands())


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option"]


def test_every_command_is_listed():
    names = {" ".join(path) for path, _ in ALL}
    assert names == {"presets", "import", "distill", "likelihood", "export", "serve", "teacher",
                     "teacher import", "sample", "sample sweep", "fid", "fid stats", "translate",
                     "translate edit", "metrics"}


@pytest.mark.parametrize("path, cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_same_idea_same_names(path, cmd):
    for opt in _options(cmd):
        names = set(opt.opts) | set(opt.secondary_opts)
        assert not names & FORBIDDEN, (path, names)
        for idea, spelled in IDEAS.items():
            if names & spelled:
                assert names == spelled, (f"{' '.join(path)}: {idea} is {sorted(names)}, elsewhere "
                                          f"{sorted(spelled)}")


@pytest.mark.parametrize("path, cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_model_readers_take_ckpt_and_the_same_ema(path, cmd):
    opts = {o.opts[0]: o for o in _options(cmd)}
    # import (and its alias teacher import)
    if "--ema" in opts and path not in (("import",), ("teacher", "import")):
        # reads a foreign file given as its argument
        assert "--ckpt" in opts, path
        assert opts["--ema"].metavar == "ema|net|target|ema_RATE", path
        assert opts["--ckpt"].metavar == "FILE|RUN_DIR", path


def test_help_has_readable_metavars():
    text = DOC.read_text()
    for bad in ("<int>", "<str>", "<float>", "<list", "<path>", "<bool>"):
        assert bad not in text


def test_choices_are_checked_before_any_work(tmp_path):
    r = CliRunner().invoke(app, ["likelihood", str(tmp_path / "missing.npz"), "--method", "exact"])
    assert r.exit_code == 2 and "'exact' is not one of 'ode', 'elbo'" in r.stderr
    r = CliRunner().invoke(app, ["sample", "--solver", "rk4", "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "--solver" in r.stderr and not (tmp_path / "x.npz").exists()


def test_cli_choices_are_the_library_choices():
    from ctmtool.cli import likelihood
    from ctmtool.jobs.likelihood import DIVERGENCES, DRAW_AVERAGES, METHODS, PROBE_DISTS, SOLVERS

    assert typing.get_args(likelihood.Solver) == SOLVERS
    hints = typing.get_type_hints(likelihood.likelihood_cmd, include_extras=True)
    for name, allowed in (("method", METHODS), ("divergence", DIVERGENCES), ("probe_dist", PROBE_DISTS),
                          ("draw_average", DRAW_AVERAGES)):
        assert typing.get_args(typing.get_args(hints[name])[0]) == allowed, name


def test_docs_cli_md_is_current():
    assert DOC.read_text() == render(), ("docs/cli.md is out of date: python -m ctmtool.cli.reference > "
                                         "docs/cli.md")
    for path, cmd in ALL:
        section = DOC.read_text().split(f"## `ctmtool {' '.join(path)}`\n")[1].split("\n## ")[0]
        for opt in _options(cmd):
            if not opt.hidden:
                assert f"`{opt.opts[0]}`" in section, (path, opt.opts)


def test_shell_completion_is_on():
    r = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout


HELP_ONLY = """
import json, sys
from ctmtool.cli.app import app
import typer
root = typer.main.get_command(app)
from ctmtool.cli.reference import commands
runs = [["--help"], ["--version"]] + [[*p, "--help"] for p, _ in commands(root)]
for args in runs:
    try:
        root.main(args, prog_name="ctmtool", standalone_mode=True)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
print(json.dumps({"runs": len(runs), "torch": "torch" in sys.modules,
                  "heavy": sorted(m for m in ("torch", "numpy.linalg", "scipy", "PIL.Image", "safetensors",
                                              "pydantic")
                                  if m in sys.modules)}))
"""


def test_help_and_version_import_no_torch():
    r = subprocess.run([sys.executable, "-c", HELP_ONLY], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["runs"] == 2 + len(ALL) and res["torch"] is False, res


@pytest.mark.parametrize("path, cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_preset_option_reads_the_same(path, cmd):
    for opt in _options(cmd):
        if "--preset" in opt.opts:
            assert opt.metavar == "NAME|FILE.toml", path


@pytest.mark.parametrize("words, cword, expected", [
    ("ctmtool likelihood --method ", 3, {"ode", "elbo"}),
    ("ctmtool fid st", 2, {"stats"}),
    ("ctmtool translate e", 2, {"edit"}),
    ("ctmtool fid x.npz --solver ", 4, {"gamma", "heun", "euler"}),
])
def test_the_shell_completes_choices_and_sub_commands(words, cword, expected):
    env = {"_CTMTOOL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    code = "import sys; sys.argv = ['ctmtool']; from ctmtool.cli.app import main; main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **env})
    assert set(r.stdout.split()) == expected, (r.stdout, r.stderr)
