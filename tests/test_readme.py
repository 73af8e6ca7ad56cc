"""The README's Python snippet runs as written (issue 16 item 8), after the main job has left runs/toy/ctm."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.cli.conftest import tiny_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_snippets_run_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no ```python block"
    monkeypatch.chdir(tmp_path)
    tiny_checkpoint(tmp_path / "runs/toy/ctm/ckpt-00001000.safetensors")
    for code in blocks:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the point is to run it as written
    assert scope["x"].shape == (1000, 2)
    assert np.load(tmp_path / "toy-samples.npz")["samples"].shape == (1000, 2)
