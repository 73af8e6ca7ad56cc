"""Shared test set-up: one CPU thread per test process, and the toy preset as a fixture."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def toy_preset():
    """presets/toy.toml, fully resolved (8-component 2-D Gaussian mixture)."""
    from ctmtool.config import load_preset

    return load_preset("toy")
