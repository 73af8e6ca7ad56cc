"""Shared CLI test helpers: tiny checkpoints of each kind, and one-line error checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctmtool.checkpoint import Checkpoint, save_checkpoint
from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from tests.conftest import EDM_RANGE

TINY = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8"]


def tiny_checkpoint(path: Path, kind: str = "ctm", preset: str = "toy", overrides: list[str] | None = None,
                    shape: tuple[int, ...] = (2,), seed: int = 0, poison: bool = False) -> Path:
    """A small untrained checkpoint (weights perturbed so outputs are not trivial); `poison` puts a NaN in
    it."""
    p = load_preset(preset, [*(EDM_RANGE if preset == "toy" else ()), *TINY, *(overrides or [])])
    torch.manual_seed(seed)
    net = build_precond(kind, p, shape)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
        if poison:
            next(net.parameters()).view(-1)[0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, Checkpoint(kind, p, shape, groups={"ema": net.state_dict()}))
    return path


def toy_points(path: Path, n: int = 6, nan: bool = False) -> Path:
    x = np.random.default_rng(0).normal(0, 0.5, (n, 2)).astype(np.float32)
    if nan:
        x[1, 0] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=x)
    return path


def one_error_line(r, code: int = 2) -> str:
    """Exit `code`, nothing on stdout, and the last stderr line the only `error: ...` line (no traceback)."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return errors[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder (relative paths such as runs/ resolve there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
