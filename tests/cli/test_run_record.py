"""Runs keep their record: stats.jsonl and log.txt in the run directory; one progress-line format off a
terminal, never past 100%; -q silences progress, -v adds debug (through `logging`)."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from ctmtool.cli.app import app

TINY = ["--set", "net.mlp.hidden=16", "--set", "net.mlp.depth=1", "--set", "net.mlp.emb=8",
        "--set", "teacher.batch=100", "--set", "teacher.log_every_kimg=0.2", "--set",
        "teacher.ckpt_every_kimg=1000"]


def _teacher(run, *extra):
    return CliRunner().invoke(app,
                              [*extra, "teacher", "--preset", "toy", "--kimg", "0.5", "--run-dir", str(run),
                                    "--device", "cpu", *TINY])


def test_teacher_leaves_stats_and_log(tmp_path):
    run = tmp_path / "run"
    r = _teacher(run)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4, 5]  # every 0.2 kimg of 0.1-kimg steps, and the end
    for row in rows:
        assert {"step", "kimg", "loss", "img_per_s", "lr_net", "seconds"} <= set(row)
        assert row["img_per_s"] > 0 and row["lr_net"] > 0 and row["loss"] > 0
    assert rows[-1]["kimg"] == 0.5 and rows[0]["seconds"] <= rows[-1]["seconds"]
    log = (run / "log.txt").read_text().splitlines()
    assert any("step       5" in line and "img/s" in line for line in log)
    assert all(re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", line) for line in log)
    # off a terminal: one line format for training progress, and no percentage past 100
    assert not re.search(r"train: ", r.stderr)
    assert all(int(p) <= 100 for p in re.findall(r"\((\d+)%", r.stderr))
    # a new run over it (--force) starts the record afresh; a resumed one appends
    r = CliRunner().invoke(app, ["-q", "teacher", "--preset", "toy", "--kimg", "0.5", "--run-dir", str(run),
                                 "--device", "cpu", "--force", *TINY])
    assert r.exit_code == 0, r.stderr
    assert len((run / "stats.jsonl").read_text().splitlines()) == 3
    r = CliRunner().invoke(app, ["-q", "teacher", "--preset", "toy", "--kimg", "0.7", "--run-dir", str(run),
                                 "--device", "cpu", "--resume", *TINY])
    assert r.exit_code == 0, r.stderr
    steps = [json.loads(x)["step"] for x in (run / "stats.jsonl").read_text().splitlines()]
    assert steps[:3] == [2, 4, 5] and steps[-1] == 7 and steps == sorted(steps)  # appended


def test_quiet_and_verbose(tmp_path):
    r = _teacher(tmp_path / "q", "-q")
    assert r.exit_code == 0, r.stderr
    assert "img/s" not in r.stderr and "[" not in r.stderr  # no progress, no log lines
    assert len((tmp_path / "q" / "stats.jsonl").read_text().splitlines()) == 3  # the record is still kept


def test_verbose_shows_the_whole_system_error(monkeypatch):
    import errno

    import ctmtool.config as config

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(config, "list_presets", full)
    quiet = CliRunner().invoke(app, ["presets"])
    loud = CliRunner().invoke(app, ["-v", "presets"])
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.stderr and quiet.stderr.count("\n") == 1
    assert ("Traceback" in loud.stderr
            and loud.stderr.strip().splitlines()[-1].startswith("error: No space left"))
