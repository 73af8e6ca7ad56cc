"""`ctmtool serve`: bad options and a busy port refused with one line before anything is served."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from ctmtool.cli.app import app

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_serve_refuses_a_busy_port_and_bad_options(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _run("serve", "--ckpt", tmp_path / "x.safetensors", "--port", port)
        assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output
    r = _run("serve", "--ckpt", tmp_path / "x.safetensors", "--port", 0)
    assert r.exit_code == 2 and "--port must be in 1..65535" in r.output
    r = _run("serve", "--ckpt", tmp_path / "x.safetensors", "--threads", 0)
    assert r.exit_code == 2 and "--threads" in r.output
